//! Our GGUF metadata in the form gguf-py reports it (type names, values as JSON), for the
//! tests that compare a file read by both. Shared by gguf's tests and the root package's
//! tests/export_cli.rs (through `#[path]`).

#![allow(dead_code)] // each test file uses a different subset

use gguf::{Array, Value};
use serde_json::{json, Value as Json};

/// The GGUF type name gguf-py gives (`UINT32`, `ARRAY[STRING]`, `ARRAY[ARRAY,INT32]`).
pub fn type_name(v: &Value) -> String {
    use gguf::ValueType;
    fn array(a: &Array) -> String {
        match a {
            // gguf-py names the nested element type from the first sub-array.
            Array::Array(v) => match v.first() {
                Some(inner) => format!("ARRAY,{}", array(inner)),
                None => "ARRAY".into(),
            },
            a => a.element_type().spec_name().to_string(),
        }
    }
    match v {
        // gguf-py records no element type for an empty array (the file has one: checked by
        // our reader above).
        Value::Array(a) if a.is_empty() => "ARRAY[]".into(),
        Value::Array(a) => format!("ARRAY[{}]", array(a)),
        v => ValueType::spec_name(v.value_type()).to_string(),
    }
}

pub fn array_json(a: &Array) -> Json {
    match a {
        Array::U8(v) => json!(v),
        Array::I8(v) => json!(v),
        Array::U16(v) => json!(v),
        Array::I16(v) => json!(v),
        Array::U32(v) => json!(v),
        Array::I32(v) => json!(v),
        Array::U64(v) => json!(v),
        Array::I64(v) => json!(v),
        Array::F32(v) => json!(v.iter().map(|&x| x as f64).collect::<Vec<_>>()),
        Array::F64(v) => json!(v),
        Array::Bool(v) => json!(v),
        Array::String(v) => json!(v),
        Array::Array(v) => Json::Array(v.iter().map(array_json).collect()),
    }
}

pub fn value_json(v: &Value) -> Json {
    match v {
        Value::U8(x) => json!(x),
        Value::I8(x) => json!(x),
        Value::U16(x) => json!(x),
        Value::I16(x) => json!(x),
        Value::U32(x) => json!(x),
        Value::I32(x) => json!(x),
        Value::U64(x) => json!(x),
        Value::I64(x) => json!(x),
        Value::F32(x) => json!(*x as f64),
        Value::F64(x) => json!(x),
        Value::Bool(x) => json!(x),
        Value::String(x) => json!(x),
        Value::Array(a) => array_json(a),
    }
}

/// JSON equality, except that floats may differ in the last bit (serde_json's float parsing
/// is not correctly rounded for every decimal Python prints).
pub fn json_close(a: &Json, b: &Json) -> bool {
    match (a, b) {
        (Json::Number(x), Json::Number(y)) if x.is_f64() || y.is_f64() => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            x == y || (x - y).abs() <= 4.0 * f64::EPSILON * x.abs()
        }
        (Json::Array(x), Json::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| json_close(x, y)),
        _ => a == b,
    }
}
