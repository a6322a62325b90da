//! Host storage of dense tensors, and conversion to the compute types of CPU kernels.

use crate::{DType, Layout, Real, WithDType};
use half::{bf16, f16};
use std::borrow::Cow;

#[derive(Debug, Clone)]
pub enum CpuStorage {
    F64(Vec<f64>),
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
}

macro_rules! each_storage {
    ($s:expr, $v:ident => $body:expr) => {
        match $s {
            CpuStorage::F64($v) => $body,
            CpuStorage::F32($v) => $body,
            CpuStorage::F16($v) => $body,
            CpuStorage::BF16($v) => $body,
            CpuStorage::U32($v) => $body,
            CpuStorage::I32($v) => $body,
        }
    };
}

/// Conversion of one stored element to and from f64 (the widest type), used for casts.
pub trait Element: WithDType {
    fn widen(self) -> f64;
    fn narrow(v: f64) -> Self;
}
impl Element for f64 {
    fn widen(self) -> f64 {
        self
    }
    fn narrow(v: f64) -> Self {
        v
    }
}
impl Element for f32 {
    fn widen(self) -> f64 {
        self as f64
    }
    fn narrow(v: f64) -> Self {
        v as f32
    }
}
impl Element for f16 {
    fn widen(self) -> f64 {
        f16::to_f64(self)
    }
    fn narrow(v: f64) -> Self {
        f16::from_f64(v)
    }
}
impl Element for bf16 {
    fn widen(self) -> f64 {
        bf16::to_f64(self)
    }
    fn narrow(v: f64) -> Self {
        bf16::from_f64(v)
    }
}
impl Element for u32 {
    fn widen(self) -> f64 {
        self as f64
    }
    fn narrow(v: f64) -> Self {
        v as u32
    }
}
impl Element for i32 {
    fn widen(self) -> f64 {
        self as f64
    }
    fn narrow(v: f64) -> Self {
        v as i32
    }
}

/// Element types a [`CpuStorage`] can be built from and read as.
pub trait StorageElem: Element {
    fn wrap(v: Vec<Self>) -> CpuStorage;
    fn slice(s: &CpuStorage) -> Option<&[Self]>;
}
macro_rules! impl_storage_elem {
    ($t:ty, $var:ident) => {
        impl StorageElem for $t {
            fn wrap(v: Vec<Self>) -> CpuStorage {
                CpuStorage::$var(v)
            }
            fn slice(s: &CpuStorage) -> Option<&[Self]> {
                match s {
                    CpuStorage::$var(v) => Some(v),
                    _ => None,
                }
            }
        }
    };
}
impl_storage_elem!(f64, F64);
impl_storage_elem!(f32, F32);
impl_storage_elem!(f16, F16);
impl_storage_elem!(bf16, BF16);
impl_storage_elem!(u32, U32);
impl_storage_elem!(i32, I32);

impl CpuStorage {
    pub fn dtype(&self) -> DType {
        match self {
            CpuStorage::F64(_) => DType::F64,
            CpuStorage::F32(_) => DType::F32,
            CpuStorage::F16(_) => DType::F16,
            CpuStorage::BF16(_) => DType::BF16,
            CpuStorage::U32(_) => DType::U32,
            CpuStorage::I32(_) => DType::I32,
        }
    }
    pub fn len(&self) -> usize {
        each_storage!(self, v => v.len())
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn zeros(dtype: DType, n: usize) -> Self {
        match dtype {
            DType::F64 => CpuStorage::F64(vec![0.0; n]),
            DType::F32 => CpuStorage::F32(vec![0.0; n]),
            DType::F16 => CpuStorage::F16(vec![f16::ZERO; n]),
            DType::BF16 => CpuStorage::BF16(vec![bf16::ZERO; n]),
            DType::U32 => CpuStorage::U32(vec![0; n]),
            DType::I32 => CpuStorage::I32(vec![0; n]),
        }
    }
    /// The elements selected by `layout`, in row-major order, converted to `T`.
    pub fn gather<T: StorageElem>(&self, layout: &Layout) -> Vec<T> {
        fn go<S: Element, T: Element>(v: &[S], layout: &Layout) -> Vec<T> {
            if layout.is_contiguous() {
                let o = layout.offset();
                return v[o..o + layout.elem_count()].iter().map(|&x| conv::<S, T>(x)).collect();
            }
            layout.indices().map(|i| conv::<S, T>(v[i])).collect()
        }
        each_storage!(self, v => go::<_, T>(v, layout))
    }
    /// The elements selected by `layout`, row-major, in this storage's own dtype.
    pub fn select(&self, layout: &Layout) -> CpuStorage {
        match self {
            CpuStorage::F64(_) => CpuStorage::F64(self.gather(layout)),
            CpuStorage::F32(_) => CpuStorage::F32(self.gather(layout)),
            CpuStorage::F16(_) => CpuStorage::F16(self.gather(layout)),
            CpuStorage::BF16(_) => CpuStorage::BF16(self.gather(layout)),
            CpuStorage::U32(_) => CpuStorage::U32(self.gather(layout)),
            CpuStorage::I32(_) => CpuStorage::I32(self.gather(layout)),
        }
    }
    /// The selected elements as the compute type `T` (no copy when already contiguous `T`).
    pub fn floats<T: Real + StorageElem>(&self, layout: &Layout) -> Cow<'_, [T]> {
        if layout.is_contiguous() {
            if let Some(s) = T::slice(self) {
                let o = layout.offset();
                return Cow::Borrowed(&s[o..o + layout.elem_count()]);
            }
        }
        Cow::Owned(self.gather::<T>(layout))
    }
    /// Builds storage of `dtype` from compute-type values.
    pub fn from_compute<T: Element>(values: Vec<T>, dtype: DType) -> Self {
        fn conv_all<T: Element, S: StorageElem>(v: &[T]) -> CpuStorage {
            S::wrap(v.iter().map(|&x| conv::<T, S>(x)).collect())
        }
        match dtype {
            DType::F64 => conv_all::<T, f64>(&values),
            DType::F32 => conv_all::<T, f32>(&values),
            DType::F16 => conv_all::<T, f16>(&values),
            DType::BF16 => conv_all::<T, bf16>(&values),
            DType::U32 => conv_all::<T, u32>(&values),
            DType::I32 => conv_all::<T, i32>(&values),
        }
    }
    /// Writes `src` (row-major, already in this storage's dtype) into the positions of `layout`.
    pub fn write(&mut self, layout: &Layout, src: &CpuStorage) {
        fn go<S: StorageElem>(dst: &mut [S], layout: &Layout, src: &CpuStorage) {
            let src: Vec<S> = src.gather(&Layout::contiguous(&[src.len()]));
            for (i, v) in layout.indices().zip(src) {
                dst[i] = v;
            }
        }
        each_storage!(self, v => go(v, layout, src))
    }
}

#[inline]
fn conv<S: Element, T: Element>(x: S) -> T {
    T::narrow(x.widen())
}
