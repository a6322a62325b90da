//! Shape, strides and offset of a tensor view over its storage.

use crate::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    shape: Vec<usize>,
    strides: Vec<usize>,
    offset: usize,
}

pub fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1];
    }
    strides
}

impl Layout {
    pub fn contiguous(shape: &[usize]) -> Self {
        Layout { shape: shape.to_vec(), strides: contiguous_strides(shape), offset: 0 }
    }
    /// The same layout starting at storage element `offset`.
    pub fn with_offset(mut self, offset: usize) -> Layout {
        self.offset = offset;
        self
    }
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn strides(&self) -> &[usize] {
        &self.strides
    }
    pub fn offset(&self) -> usize {
        self.offset
    }
    pub fn elem_count(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn is_contiguous(&self) -> bool {
        let mut expected = 1;
        for (&d, &s) in self.shape.iter().zip(&self.strides).rev() {
            if d != 1 && s != expected {
                return false;
            }
            expected *= d;
        }
        true
    }
    pub fn transpose(&self, a: usize, b: usize) -> Result<Layout> {
        let n = self.shape.len();
        if a >= n || b >= n {
            return Err(Error::shape("transpose", format!("dims {a},{b} of a rank-{n} tensor")));
        }
        let mut l = self.clone();
        l.shape.swap(a, b);
        l.strides.swap(a, b);
        Ok(l)
    }
    pub fn narrow(&self, dim: usize, start: usize, len: usize) -> Result<Layout> {
        if dim >= self.shape.len() || start + len > self.shape[dim] {
            return Err(Error::shape(
                "narrow",
                format!("dim {dim} range {start}..{} of shape {:?}", start + len, self.shape),
            ));
        }
        let mut l = self.clone();
        l.offset += start * l.strides[dim];
        l.shape[dim] = len;
        Ok(l)
    }
    /// Storage index of every element in row-major order.
    pub fn indices(&self) -> impl Iterator<Item = usize> + '_ {
        let n = self.elem_count();
        let rank = self.shape.len();
        let mut idx = vec![0usize; rank];
        let mut pos = self.offset;
        (0..n).map(move |i| {
            if i > 0 {
                for d in (0..rank).rev() {
                    idx[d] += 1;
                    pos += self.strides[d];
                    if idx[d] < self.shape[d] {
                        break;
                    }
                    pos -= self.strides[d] * self.shape[d];
                    idx[d] = 0;
                }
            }
            pos
        })
    }
}
