//! Structured values: msgpack binaries, generic structs, and any literal as plain JSON.

use serde::{de::DeserializeOwned, Serialize};

use super::{describe, none, scalar_literal, scalar_of, unwrap_union, FromLiteral, IntoLiteral};
use crate::flyte::core::{literal, primitive, scalar, Binary, Literal};
use crate::{json, AgentError};

/// The `Binary.tag` flytekit gives msgpack-encoded values.
pub const MSGPACK_TAG: &str = "msgpack";

/// A value carried as msgpack (`Scalar.binary` tagged `"msgpack"`): how flytekit (1.14 and
/// later) sends untyped `dict`s, dataclasses and pydantic models, and how its webhook agent
/// answers. `T` is any `serde` type; structs are written as maps by field name, as flytekit
/// writes them. Reads a generic struct too (what older flytekit sends for the same types).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Msgpack<T>(pub T);

/// A value carried as a generic struct (`Scalar.generic`, a protobuf `Struct`): how older
/// flytekit sent dataclasses. Numbers in a `Struct` are doubles; whole ones read into integer
/// fields. Reads msgpack too. A `T` that is not a JSON object when serialized is written as an
/// empty struct.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Generic<T>(pub T);

/// Reads a msgpack binary or a generic struct into `T`.
fn read_structured<T: DeserializeOwned>(literal: &Literal, expected: fn() -> String) -> Result<T, AgentError> {
    let wrong = |e: &dyn std::fmt::Display| AgentError::permanent(format!("expected {}, but it does not fit: {e}", expected()));
    match scalar_of(literal) {
        Some(scalar::Value::Binary(b)) if b.tag == MSGPACK_TAG => rmp_serde::from_slice(&b.value).map_err(|e| wrong(&e)),
        Some(scalar::Value::Generic(s)) => serde_json::from_value(json::struct_to_json(s)).map_err(|e| wrong(&e)),
        _ => Err(AgentError::permanent(format!("expected {}, found {}", expected(), describe(literal)))),
    }
}

impl<T: DeserializeOwned> FromLiteral for Msgpack<T> {
    fn flyte_type() -> String {
        format!("msgpack binary ({})", std::any::type_name::<T>())
    }
    fn from_literal(literal: &Literal) -> Result<Self, AgentError> {
        read_structured(literal, Self::flyte_type).map(Msgpack)
    }
}

impl<T: Serialize> IntoLiteral for Msgpack<T> {
    fn into_literal(self) -> Literal {
        // Fails only when `T`'s own `Serialize` fails; the value then becomes `none`, loudly.
        match rmp_serde::to_vec_named(&self.0) {
            Ok(bytes) => scalar_literal(scalar::Value::Binary(Binary { value: bytes.into(), tag: MSGPACK_TAG.into() })),
            Err(e) => {
                tracing::error!(error = %e, "a value does not serialize to msgpack; sending none instead");
                none()
            }
        }
    }
}

impl<T: DeserializeOwned> FromLiteral for Generic<T> {
    fn flyte_type() -> String {
        format!("generic struct ({})", std::any::type_name::<T>())
    }
    fn from_literal(literal: &Literal) -> Result<Self, AgentError> {
        read_structured(literal, Self::flyte_type).map(Generic)
    }
}

impl<T: Serialize> IntoLiteral for Generic<T> {
    fn into_literal(self) -> Literal {
        let value = serde_json::to_value(&self.0).unwrap_or_else(|e| {
            tracing::error!(error = %e, "a value does not serialize to JSON; sending an empty struct instead");
            serde_json::Value::Null
        });
        scalar_literal(scalar::Value::Generic(json::json_to_struct(&value)))
    }
}

impl FromLiteral for serde_json::Value {
    fn flyte_type() -> String {
        "a JSON-like value".into()
    }
    fn from_literal(literal: &Literal) -> Result<Self, AgentError> {
        to_json(literal)
    }
}

/// JSON objects become a generic struct, other values the matching literal (numbers: an
/// integer when whole and in range, else a float; arrays: a list; `null`: none).
impl IntoLiteral for serde_json::Value {
    fn into_literal(self) -> Literal {
        use serde_json::Value as J;
        match self {
            J::Null => none(),
            J::Bool(b) => b.into_literal(),
            J::Number(n) => match n.as_i64() {
                Some(i) => i.into_literal(),
                None => n.as_f64().unwrap_or(f64::NAN).into_literal(),
            },
            J::String(s) => s.into_literal(),
            J::Array(a) => a.into_literal(),
            object @ J::Object(_) => scalar_literal(scalar::Value::Generic(json::json_to_struct(&object))),
        }
    }
}

/// Any literal as plain JSON: primitives as themselves, datetimes as RFC 3339 text, durations
/// as seconds, none as `null`, lists and maps as arrays and objects, files and datasets as
/// their URI, generic structs as objects, msgpack decoded. Other binaries, schemas, errors and
/// offloaded literals are not read.
pub fn to_json(literal: &Literal) -> Result<serde_json::Value, AgentError> {
    use serde_json::Value as J;
    let literal = unwrap_union(literal);
    let unreadable = || AgentError::permanent(format!("{} has no JSON form", describe(literal)));
    match &literal.value {
        Some(literal::Value::Collection(c)) => c.literals.iter().map(to_json).collect::<Result<Vec<_>, _>>().map(J::Array),
        Some(literal::Value::Map(m)) => {
            m.literals.iter().map(|(k, l)| Ok((k.clone(), to_json(l)?))).collect::<Result<_, _>>().map(J::Object)
        }
        Some(literal::Value::Scalar(s)) => match &s.value {
            Some(scalar::Value::Primitive(p)) => match &p.value {
                Some(primitive::Value::Integer(i)) => Ok(J::from(*i)),
                Some(primitive::Value::FloatValue(f)) => Ok(serde_json::Number::from_f64(*f).map(J::Number).unwrap_or(J::Null)),
                Some(primitive::Value::StringValue(s)) => Ok(J::String(s.clone())),
                Some(primitive::Value::Boolean(b)) => Ok(J::Bool(*b)),
                Some(primitive::Value::Datetime(t)) => Ok(J::String(rfc3339(t))),
                Some(primitive::Value::Duration(d)) => Ok(J::from(d.seconds as f64 + f64::from(d.nanos) / 1e9)),
                None => Err(unreadable()),
            },
            Some(scalar::Value::NoneType(_)) => Ok(J::Null),
            Some(scalar::Value::Blob(b)) => Ok(J::String(b.uri.clone())),
            Some(scalar::Value::StructuredDataset(d)) => Ok(J::String(d.uri.clone())),
            Some(scalar::Value::Generic(s)) => Ok(json::struct_to_json(s)),
            Some(scalar::Value::Binary(b)) if b.tag == MSGPACK_TAG => {
                rmp_serde::from_slice(&b.value).map_err(|e| AgentError::permanent(format!("msgpack binary does not decode as JSON: {e}")))
            }
            _ => Err(unreadable()),
        },
        _ => Err(unreadable()),
    }
}

/// A timestamp as RFC 3339 text in UTC (`2024-05-01T12:00:00Z`, with a fraction when present).
fn rfc3339(t: &prost_types::Timestamp) -> String {
    let c = super::UtcTime::of(t);
    let fraction = if c.nanos > 0 { format!(".{:09}", c.nanos).trim_end_matches('0').to_string() } else { String::new() };
    format!("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}{fraction}Z", c.year, c.month, c.day, c.hour, c.minute, c.second)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::Blob;
    use serde::Deserialize;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Point {
        x: i64,
        label: String,
    }

    #[test]
    fn structured_values_read_either_encoding() {
        let p = Point { x: 3, label: "p".into() };
        let packed = Msgpack(p.clone()).into_literal();
        let generic = Generic(p.clone()).into_literal();
        assert_eq!(Msgpack::<Point>::from_literal(&generic).unwrap().0, p);
        assert_eq!(Generic::<Point>::from_literal(&packed).unwrap().0, p);
        assert_eq!(to_json(&packed).unwrap(), serde_json::json!({"x": 3, "label": "p"}));
        // Written as a map by field name, as flytekit's msgpack encoder reads it.
        let Some(scalar::Value::Binary(b)) = scalar_of(&packed) else { panic!("not binary") };
        assert_eq!(b.value[0] & 0xf0, 0x80, "a fixmap");
    }

    #[test]
    fn json_view_of_any_literal() {
        let t = prost_types::Timestamp { seconds: 951_782_400, nanos: 500_000_000 };
        assert_eq!(rfc3339(&t), "2000-02-29T00:00:00.5Z");
        assert_eq!(rfc3339(&prost_types::Timestamp { seconds: -1, nanos: 0 }), "1969-12-31T23:59:59Z");
        let l = serde_json::json!({"a": [1, 2.5, "s", null, true]}).into_literal();
        assert_eq!(to_json(&l).unwrap(), serde_json::json!({"a": [1, 2.5, "s", null, true]}));
        assert_eq!(to_json(&Blob::file("s3://f").into_literal()).unwrap(), "s3://f");
    }
}
