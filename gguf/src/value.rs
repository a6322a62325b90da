//! GGUF metadata values: the thirteen value types, typed arrays, and [`FromValue`] for typed
//! access.

/// A metadata value type, with its GGUF id (`enum gguf_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ValueType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

impl ValueType {
    /// The type's name in the GGUF specification (`GGUF_TYPE_UINT32` without the prefix, as
    /// gguf-py's `GGUFValueType` names it).
    pub fn spec_name(self) -> &'static str {
        use ValueType::*;
        match self {
            U8 => "UINT8",
            I8 => "INT8",
            U16 => "UINT16",
            I16 => "INT16",
            U32 => "UINT32",
            I32 => "INT32",
            U64 => "UINT64",
            I64 => "INT64",
            F32 => "FLOAT32",
            F64 => "FLOAT64",
            Bool => "BOOL",
            String => "STRING",
            Array => "ARRAY",
        }
    }

    /// The type with GGUF id `id`, or `None` for an unknown id.
    pub fn from_id(id: u32) -> Option<ValueType> {
        use ValueType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    /// The fewest bytes one value of this type takes in a file (a string is at least its
    /// 8-byte length, an array its 4-byte type and 8-byte count). Used to reject counts a
    /// file cannot hold before allocating for them.
    pub(crate) fn min_size(self) -> u64 {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 | String => 8,
            Array => 12,
        }
    }

    /// A short lowercase name used in messages: `u32`, `string`, `array`...
    pub fn name(self) -> &'static str {
        use ValueType::*;
        match self {
            U8 => "u8",
            I8 => "i8",
            U16 => "u16",
            I16 => "i16",
            U32 => "u32",
            I32 => "i32",
            F32 => "f32",
            Bool => "bool",
            String => "string",
            Array => "array",
            U64 => "u64",
            I64 => "i64",
            F64 => "f64",
        }
    }
}

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Array),
}

/// A metadata array: all elements share one type, so each is stored as a typed vector.
/// Arrays may nest.
#[derive(Debug, Clone, PartialEq)]
pub enum Array {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    Bool(Vec<bool>),
    String(Vec<String>),
    Array(Vec<Array>),
}

impl Value {
    /// This value's type.
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F32(_) => ValueType::F32,
            Value::F64(_) => ValueType::F64,
            Value::Bool(_) => ValueType::Bool,
            Value::String(_) => ValueType::String,
            Value::Array(_) => ValueType::Array,
        }
    }

    /// A description for messages: `u32`, `string`, `array of 3 i32`...
    pub fn describe(&self) -> String {
        match self {
            Value::Array(a) => a.describe(),
            v => v.value_type().name().to_string(),
        }
    }

    /// The value as an `i128` when it is an integer of any width.
    fn as_integer(&self) -> Option<i128> {
        Some(match *self {
            Value::U8(v) => v.into(),
            Value::I8(v) => v.into(),
            Value::U16(v) => v.into(),
            Value::I16(v) => v.into(),
            Value::U32(v) => v.into(),
            Value::I32(v) => v.into(),
            Value::U64(v) => v.into(),
            Value::I64(v) => v.into(),
            _ => return None,
        })
    }
}

impl Array {
    /// The element type.
    pub fn element_type(&self) -> ValueType {
        match self {
            Array::U8(_) => ValueType::U8,
            Array::I8(_) => ValueType::I8,
            Array::U16(_) => ValueType::U16,
            Array::I16(_) => ValueType::I16,
            Array::U32(_) => ValueType::U32,
            Array::I32(_) => ValueType::I32,
            Array::U64(_) => ValueType::U64,
            Array::I64(_) => ValueType::I64,
            Array::F32(_) => ValueType::F32,
            Array::F64(_) => ValueType::F64,
            Array::Bool(_) => ValueType::Bool,
            Array::String(_) => ValueType::String,
            Array::Array(_) => ValueType::Array,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Array::U8(v) => v.len(),
            Array::I8(v) => v.len(),
            Array::U16(v) => v.len(),
            Array::I16(v) => v.len(),
            Array::U32(v) => v.len(),
            Array::I32(v) => v.len(),
            Array::U64(v) => v.len(),
            Array::I64(v) => v.len(),
            Array::F32(v) => v.len(),
            Array::F64(v) => v.len(),
            Array::Bool(v) => v.len(),
            Array::String(v) => v.len(),
            Array::Array(v) => v.len(),
        }
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A description for messages: `array of 3 i32`.
    pub fn describe(&self) -> String {
        format!("array of {} {}", self.len(), self.element_type().name())
    }
}

macro_rules! value_from {
    ($($t:ty => $variant:ident),*) => {$(
        impl From<$t> for Value {
            fn from(v: $t) -> Value {
                Value::$variant(v)
            }
        }
        impl From<Vec<$t>> for Array {
            fn from(v: Vec<$t>) -> Array {
                Array::$variant(v)
            }
        }
        impl From<Vec<$t>> for Value {
            fn from(v: Vec<$t>) -> Value {
                Value::Array(Array::$variant(v))
            }
        }
    )*};
}
value_from!(u8 => U8, i8 => I8, u16 => U16, i16 => I16, u32 => U32, i32 => I32, u64 => U64,
    i64 => I64, f32 => F32, f64 => F64, bool => Bool, String => String);

impl From<&str> for Value {
    fn from(v: &str) -> Value {
        Value::String(v.to_string())
    }
}

impl From<Vec<&str>> for Value {
    fn from(v: Vec<&str>) -> Value {
        Value::Array(Array::String(v.into_iter().map(str::to_string).collect()))
    }
}

impl From<Array> for Value {
    fn from(v: Array) -> Value {
        Value::Array(v)
    }
}

impl From<Vec<Array>> for Value {
    fn from(v: Vec<Array>) -> Value {
        Value::Array(Array::Array(v))
    }
}

/// Types a metadata value converts to, for [`crate::GgufFile::get`].
///
/// Integers convert from any integer value type whose value fits (a `u32` key read as `u64`,
/// an `i32` holding 7 read as `u32`); `f64` also reads `f32` values; `f32` reads `f32` only.
/// Strings and arrays borrow from the file's metadata.
pub trait FromValue<'a>: Sized {
    /// The expected type as named in errors.
    const EXPECTED: &'static str;
    /// The converted value, or `None` when `v` has another type or does not fit.
    fn from_value(v: &'a Value) -> Option<Self>;
}

macro_rules! integer_from_value {
    ($($t:ty => $name:literal),*) => {$(
        impl FromValue<'_> for $t {
            const EXPECTED: &'static str = $name;
            fn from_value(v: &Value) -> Option<$t> {
                v.as_integer().and_then(|i| <$t>::try_from(i).ok())
            }
        }
    )*};
}
integer_from_value!(u8 => "u8", i8 => "i8", u16 => "u16", i16 => "i16", u32 => "u32",
    i32 => "i32", u64 => "u64", i64 => "i64", usize => "an unsigned integer");

impl FromValue<'_> for f32 {
    const EXPECTED: &'static str = "f32";
    fn from_value(v: &Value) -> Option<f32> {
        match *v {
            Value::F32(x) => Some(x),
            _ => None,
        }
    }
}

impl FromValue<'_> for f64 {
    const EXPECTED: &'static str = "f64 or f32";
    fn from_value(v: &Value) -> Option<f64> {
        match *v {
            Value::F32(x) => Some(x.into()),
            Value::F64(x) => Some(x),
            _ => None,
        }
    }
}

impl FromValue<'_> for bool {
    const EXPECTED: &'static str = "bool";
    fn from_value(v: &Value) -> Option<bool> {
        match *v {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }
}

impl<'a> FromValue<'a> for &'a str {
    const EXPECTED: &'static str = "string";
    fn from_value(v: &'a Value) -> Option<&'a str> {
        match v {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
}

impl<'a> FromValue<'a> for &'a Value {
    const EXPECTED: &'static str = "any value";
    fn from_value(v: &'a Value) -> Option<&'a Value> {
        Some(v)
    }
}

impl<'a> FromValue<'a> for &'a Array {
    const EXPECTED: &'static str = "array";
    fn from_value(v: &'a Value) -> Option<&'a Array> {
        match v {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

macro_rules! slice_from_value {
    ($($variant:ident: $t:ty => $name:literal),*) => {$(
        impl<'a> FromValue<'a> for &'a [$t] {
            const EXPECTED: &'static str = $name;
            fn from_value(v: &'a Value) -> Option<&'a [$t]> {
                match v {
                    Value::Array(Array::$variant(a)) => Some(a),
                    _ => None,
                }
            }
        }
    )*};
}
slice_from_value!(U8: u8 => "array of u8", I8: i8 => "array of i8", U16: u16 => "array of u16",
    I16: i16 => "array of i16", U32: u32 => "array of u32", I32: i32 => "array of i32",
    U64: u64 => "array of u64", I64: i64 => "array of i64", F32: f32 => "array of f32",
    F64: f64 => "array of f64", Bool: bool => "array of bool",
    String: String => "array of string", Array: Array => "array of arrays");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_convert_when_they_fit() {
        assert_eq!(u64::from_value(&Value::U32(7)), Some(7));
        assert_eq!(u32::from_value(&Value::I32(7)), Some(7));
        assert_eq!(u32::from_value(&Value::I32(-1)), None);
        assert_eq!(u8::from_value(&Value::U64(300)), None);
        assert_eq!(u32::from_value(&Value::F32(1.0)), None);
        assert_eq!(f64::from_value(&Value::F32(0.5)), Some(0.5));
        assert_eq!(f32::from_value(&Value::F64(0.5)), None);
    }

    #[test]
    fn ids_and_descriptions() {
        for id in 0..13 {
            assert_eq!(ValueType::from_id(id).map(|t| t as u32), Some(id));
        }
        assert_eq!(ValueType::from_id(13), None);
        assert_eq!(Value::Array(Array::I32(vec![1, 2, 3])).describe(), "array of 3 i32");
        assert_eq!(Value::String("x".into()).describe(), "string");
    }

    #[test]
    fn conversions_into_values() {
        assert_eq!(Value::from(7u32), Value::U32(7));
        assert_eq!(Value::from("a"), Value::String("a".into()));
        assert_eq!(Value::from(vec!["a", "b"]), Value::Array(Array::String(vec!["a".into(), "b".into()])));
        assert_eq!(Value::from(vec![1.5f32]), Value::Array(Array::F32(vec![1.5])));
        assert_eq!(Value::from(vec![Array::from(vec![1i8])]), Value::Array(Array::Array(vec![Array::I8(vec![1])])));
    }
}
