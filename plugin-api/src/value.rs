//! Flyte values as Rust values: read inputs, build outputs.
//!
//! A Flyte value is a [`Literal`]; [`FromLiteral`] reads one into a Rust value and
//! [`IntoLiteral`] builds one. [`crate::TaskRequest::input`] and [`crate::Literals::read`] read
//! by name; [`crate::Literals::with`] and [`crate::Resource::with_output`] build. The same
//! values arrive from Flyte 1 and Flyte 2.
//!
//! | Flyte type (flytekit annotation) | Rust type |
//! |---|---|
//! | `integer` (`int`) | `i64` (also `i32`, `u32`, `u64`, range-checked) |
//! | `float` (`float`) | `f64` |
//! | `string` (`str`), `boolean` (`bool`) | `String`, `bool` |
//! | `datetime` (`datetime.datetime`), `duration` (`timedelta`) | [`SystemTime`], [`Duration`] |
//! | `collection` (`list[T]`) | `Vec<T>` |
//! | `map` (`dict[str, T]`) | `BTreeMap<String, T>`, `HashMap<String, T>` |
//! | `none`, and `union` with none (`Optional[T]`) | `Option<T>` (an absent input reads as `None`) |
//! | `blob` (`FlyteFile`, `FlyteDirectory`) | [`Blob`] |
//! | `structured dataset` (`StructuredDataset`, data frames) | [`StructuredDataset`] |
//! | `binary` tagged `msgpack` (untyped `dict`, dataclasses, pydantic models) | [`Msgpack<T>`] |
//! | `generic struct` (older flytekit dataclasses, protobuf `Struct`) | [`Generic<T>`], `serde_json::Value` |
//! | anything | [`Literal`] itself |
//!
//! Union values (`Optional[T]`, `Union[A, B]`) read as the value they carry. `serde_json::Value`
//! reads any literal as plain JSON (datetimes as RFC 3339 text, durations as seconds, files and
//! datasets as their URI, msgpack decoded), which suits templating values into text.
//!
//! ```
//! use agent_plugin_api::{value::Msgpack, Literals};
//! use std::collections::BTreeMap;
//!
//! let outputs = Literals::new().with("n", 3).with("names", vec!["a", "b"]).with("info", Msgpack(BTreeMap::from([("ok", true)])));
//! assert_eq!(outputs.read::<i64>("n").unwrap(), 3);
//! assert_eq!(outputs.read::<Vec<String>>("names").unwrap(), ["a", "b"]);
//! let Msgpack(info) = outputs.read::<Msgpack<BTreeMap<String, bool>>>("info").unwrap();
//! assert!(info["ok"]);
//! assert!(outputs.read::<String>("n").unwrap_err().message().contains("expected string, found integer"));
//! ```

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, SystemTime},
};

use crate::flyte::core::{literal, primitive, scalar, Literal, LiteralCollection, LiteralMap, Primitive, Scalar, Void};
use crate::AgentError;

mod reference;
mod structured;

pub use reference::{Blob, StructuredDataset};
pub use structured::{to_json, Generic, Msgpack, MSGPACK_TAG};

/// A protobuf `Timestamp` as a UTC calendar date and time (for formatting datetimes the way a
/// caller expects, e.g. Python's `isoformat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UtcTime {
    /// Year (proleptic Gregorian).
    pub year: i64,
    /// Month, 1–12.
    pub month: u32,
    /// Day of the month, 1–31.
    pub day: u32,
    /// Hour, 0–23.
    pub hour: u32,
    /// Minute, 0–59.
    pub minute: u32,
    /// Second, 0–59.
    pub second: u32,
    /// Nanoseconds of the second.
    pub nanos: u32,
}

impl UtcTime {
    /// The calendar time of `t`.
    pub fn of(t: &prost_types::Timestamp) -> UtcTime {
        let days = t.seconds.div_euclid(86_400);
        let secs = t.seconds.rem_euclid(86_400);
        // The civil date from days since 1970-01-01 (Howard Hinnant's civil_from_days).
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = yoe + era * 400 + i64::from(month <= 2);
        let (hour, minute, second) = ((secs / 3600) as u32, (secs % 3600 / 60) as u32, (secs % 60) as u32);
        UtcTime { year, month, day, hour, minute, second, nanos: t.nanos.max(0) as u32 }
    }
}

/// A Rust value that can be read from a Flyte [`Literal`].
pub trait FromLiteral: Sized {
    /// The Flyte type this reads, as error messages name it (`"list of integer"`).
    fn flyte_type() -> String;

    /// Reads `literal`; a mismatch is a permanent error saying what was expected and found.
    fn from_literal(literal: &Literal) -> Result<Self, AgentError>;

    /// What an absent input reads as: `None` (absence is an error) except for `Option<T>`.
    fn if_absent() -> Option<Self> {
        None
    }
}

/// A Rust value that can become a Flyte [`Literal`].
pub trait IntoLiteral {
    /// The literal.
    fn into_literal(self) -> Literal;
}

/// The error for a literal that is not a `T`.
pub fn mismatch<T: FromLiteral>(found: &Literal) -> AgentError {
    AgentError::permanent(format!("expected {}, found {}", T::flyte_type(), describe(found)))
}

/// What a literal holds, in a few words (`integer`, `a list of 3 values`, `binary (msgpack)`).
pub fn describe(literal: &Literal) -> String {
    match &literal.value {
        None => "an empty literal".into(),
        Some(literal::Value::Collection(c)) => format!("a list of {} values", c.literals.len()),
        Some(literal::Value::Map(m)) => format!("a map of {} values", m.literals.len()),
        Some(literal::Value::OffloadedMetadata(o)) => format!("a literal offloaded to {}", o.uri),
        Some(literal::Value::Scalar(s)) => match &s.value {
            None => "an empty scalar".into(),
            Some(scalar::Value::Primitive(p)) => match &p.value {
                None => "an empty primitive".into(),
                Some(primitive::Value::Integer(_)) => "integer".into(),
                Some(primitive::Value::FloatValue(_)) => "float".into(),
                Some(primitive::Value::StringValue(_)) => "string".into(),
                Some(primitive::Value::Boolean(_)) => "boolean".into(),
                Some(primitive::Value::Datetime(_)) => "datetime".into(),
                Some(primitive::Value::Duration(_)) => "duration".into(),
            },
            Some(scalar::Value::Blob(_)) => "blob".into(),
            Some(scalar::Value::Binary(b)) => format!("binary ({})", if b.tag.is_empty() { "untagged" } else { &b.tag }),
            Some(scalar::Value::Schema(_)) => "schema".into(),
            Some(scalar::Value::NoneType(_)) => "none".into(),
            Some(scalar::Value::Error(_)) => "error".into(),
            Some(scalar::Value::Generic(_)) => "generic struct".into(),
            Some(scalar::Value::StructuredDataset(_)) => "structured dataset".into(),
            Some(scalar::Value::Union(u)) => match &u.value {
                Some(v) => describe(v),
                None => "an empty union".into(),
            },
        },
    }
}

/// The literal a union carries (recursively), or the literal itself.
pub(crate) fn unwrap_union(literal: &Literal) -> &Literal {
    if let Some(literal::Value::Scalar(s)) = &literal.value {
        if let Some(scalar::Value::Union(u)) = &s.value {
            if let Some(inner) = &u.value {
                return unwrap_union(inner);
            }
        }
    }
    literal
}

pub(crate) fn scalar_of(literal: &Literal) -> Option<&scalar::Value> {
    match &unwrap_union(literal).value {
        Some(literal::Value::Scalar(s)) => s.value.as_ref(),
        _ => None,
    }
}

fn primitive_of(literal: &Literal) -> Option<&primitive::Value> {
    match scalar_of(literal) {
        Some(scalar::Value::Primitive(p)) => p.value.as_ref(),
        _ => None,
    }
}

/// A literal holding one scalar.
pub(crate) fn scalar_literal(value: scalar::Value) -> Literal {
    Literal { value: Some(literal::Value::Scalar(Box::new(Scalar { value: Some(value) }))), ..Default::default() }
}

fn primitive_literal(value: primitive::Value) -> Literal {
    scalar_literal(scalar::Value::Primitive(Primitive { value: Some(value) }))
}

/// The `none` literal (flytekit's `None`).
pub fn none() -> Literal {
    scalar_literal(scalar::Value::NoneType(Void {}))
}

impl FromLiteral for Literal {
    fn flyte_type() -> String {
        "any literal".into()
    }
    fn from_literal(literal: &Literal) -> Result<Self, AgentError> {
        Ok(literal.clone())
    }
}

impl IntoLiteral for Literal {
    fn into_literal(self) -> Literal {
        self
    }
}

macro_rules! primitive_value {
    ($t:ty, $name:literal, $variant:ident, |$v:ident| $read:expr, |$w:ident| $write:expr) => {
        impl FromLiteral for $t {
            fn flyte_type() -> String {
                $name.into()
            }
            fn from_literal(literal: &Literal) -> Result<Self, AgentError> {
                match primitive_of(literal) {
                    Some(primitive::Value::$variant($v)) => $read,
                    _ => Err(mismatch::<Self>(literal)),
                }
            }
        }
        impl IntoLiteral for $t {
            fn into_literal(self) -> Literal {
                let $w = self;
                primitive_literal(primitive::Value::$variant($write))
            }
        }
    };
}

primitive_value!(i64, "integer", Integer, |v| Ok(*v), |w| w);
primitive_value!(bool, "boolean", Boolean, |v| Ok(*v), |w| w);
primitive_value!(String, "string", StringValue, |v| Ok(v.clone()), |w| w);
primitive_value!(SystemTime, "datetime", Datetime, |v| system_time(v), |w| timestamp(w));
primitive_value!(
    Duration,
    "duration",
    Duration,
    |v| Duration::try_from(*v).map_err(|_| AgentError::permanent(format!("expected a duration of zero or more, found {v}"))),
    |w| prost_types::Duration::try_from(w).unwrap_or(prost_types::Duration { seconds: i64::MAX, nanos: 999_999_999 })
);

impl FromLiteral for f64 {
    fn flyte_type() -> String {
        "float".into()
    }
    /// Reads a float, or an integer (exactly when it fits in 53 bits).
    fn from_literal(literal: &Literal) -> Result<Self, AgentError> {
        match primitive_of(literal) {
            Some(primitive::Value::FloatValue(v)) => Ok(*v),
            Some(primitive::Value::Integer(v)) => Ok(*v as f64),
            _ => Err(mismatch::<Self>(literal)),
        }
    }
}

impl IntoLiteral for f64 {
    fn into_literal(self) -> Literal {
        primitive_literal(primitive::Value::FloatValue(self))
    }
}

macro_rules! narrow_integer {
    ($($t:ty),*) => {$(
        impl FromLiteral for $t {
            fn flyte_type() -> String {
                format!("integer (fitting {})", stringify!($t))
            }
            fn from_literal(literal: &Literal) -> Result<Self, AgentError> {
                let wide = i64::from_literal(literal).map_err(|_| mismatch::<Self>(literal))?;
                <$t>::try_from(wide).map_err(|_| AgentError::permanent(format!("expected {}, found {wide}", Self::flyte_type())))
            }
        }
        impl IntoLiteral for $t {
            fn into_literal(self) -> Literal {
                // Saturates u64 values past i64::MAX: Flyte integers are 64-bit signed.
                i64::try_from(self).unwrap_or(i64::MAX).into_literal()
            }
        }
    )*};
}

narrow_integer!(i32, u32, u64);

impl IntoLiteral for &str {
    fn into_literal(self) -> Literal {
        self.to_string().into_literal()
    }
}

fn system_time(t: &prost_types::Timestamp) -> Result<SystemTime, AgentError> {
    SystemTime::try_from(*t).map_err(|e| AgentError::permanent(format!("expected a datetime this machine can represent: {e}")))
}

fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(t)
}

impl<T: FromLiteral> FromLiteral for Option<T> {
    fn flyte_type() -> String {
        format!("optional {}", T::flyte_type())
    }
    fn from_literal(literal: &Literal) -> Result<Self, AgentError> {
        match scalar_of(literal) {
            Some(scalar::Value::NoneType(_)) => Ok(None),
            _ => T::from_literal(literal).map(Some),
        }
    }
    fn if_absent() -> Option<Self> {
        Some(None)
    }
}

impl<T: IntoLiteral> IntoLiteral for Option<T> {
    fn into_literal(self) -> Literal {
        match self {
            Some(v) => v.into_literal(),
            None => none(),
        }
    }
}

impl<T: FromLiteral> FromLiteral for Vec<T> {
    fn flyte_type() -> String {
        format!("list of {}", T::flyte_type())
    }
    fn from_literal(literal: &Literal) -> Result<Self, AgentError> {
        match &unwrap_union(literal).value {
            Some(literal::Value::Collection(c)) => {
                c.literals.iter().enumerate().map(|(i, l)| T::from_literal(l).map_err(|e| e.context(format_args!("[{i}]")))).collect()
            }
            _ => Err(mismatch::<Self>(literal)),
        }
    }
}

impl<T: IntoLiteral> IntoLiteral for Vec<T> {
    fn into_literal(self) -> Literal {
        let literals = self.into_iter().map(IntoLiteral::into_literal).collect();
        Literal { value: Some(literal::Value::Collection(LiteralCollection { literals })), ..Default::default() }
    }
}

fn read_map<T: FromLiteral, M: FromIterator<(String, T)>>(literal: &Literal) -> Result<M, AgentError> {
    match &unwrap_union(literal).value {
        Some(literal::Value::Map(m)) => m
            .literals
            .iter()
            .map(|(k, l)| T::from_literal(l).map(|v| (k.clone(), v)).map_err(|e| e.context(format_args!("[{k:?}]"))))
            .collect(),
        _ => Err(AgentError::permanent(format!("expected map of string to {}, found {}", T::flyte_type(), describe(literal)))),
    }
}

fn map_literal<K: Into<String>, T: IntoLiteral>(entries: impl IntoIterator<Item = (K, T)>) -> Literal {
    let literals = entries.into_iter().map(|(k, v)| (k.into(), v.into_literal())).collect();
    Literal { value: Some(literal::Value::Map(LiteralMap { literals })), ..Default::default() }
}

impl<T: FromLiteral> FromLiteral for BTreeMap<String, T> {
    fn flyte_type() -> String {
        format!("map of string to {}", T::flyte_type())
    }
    fn from_literal(literal: &Literal) -> Result<Self, AgentError> {
        read_map(literal)
    }
}

impl<K: Into<String>, T: IntoLiteral> IntoLiteral for BTreeMap<K, T> {
    fn into_literal(self) -> Literal {
        map_literal(self)
    }
}

impl<T: FromLiteral> FromLiteral for HashMap<String, T> {
    fn flyte_type() -> String {
        format!("map of string to {}", T::flyte_type())
    }
    fn from_literal(literal: &Literal) -> Result<Self, AgentError> {
        read_map(literal)
    }
}

impl<K: Into<String>, T: IntoLiteral> IntoLiteral for HashMap<K, T> {
    fn into_literal(self) -> Literal {
        map_literal(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn round_trip<T: IntoLiteral + FromLiteral + Clone + PartialEq + std::fmt::Debug>(v: T) {
        assert_eq!(T::from_literal(&v.clone().into_literal()).unwrap(), v);
    }

    #[test]
    fn primitives_and_containers_round_trip() {
        round_trip(-7i64);
        round_trip(2.5f64);
        round_trip(true);
        round_trip("héllo".to_string());
        round_trip(UNIX_EPOCH + Duration::new(1_714_564_800, 123));
        round_trip(Duration::from_millis(1500));
        round_trip(vec![vec![1i64, 2], vec![]]);
        round_trip(BTreeMap::from([("a".to_string(), Some(1i64)), ("b".to_string(), None)]));
        round_trip(Blob::directory("s3://b/d").with_format("csv"));
        round_trip(StructuredDataset::new("s3://b/t").with_format("parquet"));
        round_trip(Some(3u32));
    }

    #[test]
    fn mismatch_names_expected_and_found() {
        let e = Vec::<i64>::from_literal(&vec![1i64.into_literal(), "x".into_literal()].into_literal()).unwrap_err();
        assert_eq!(e.message(), "[1]: expected integer, found string");
        assert!(e.is_job_failure());
        let e = i32::from_literal(&(1i64 << 40).into_literal()).unwrap_err();
        assert!(e.message().contains("fitting i32"), "{e}");
    }

    #[test]
    fn unions_and_none_read_through() {
        let union = scalar_literal(scalar::Value::Union(Box::new(crate::flyte::core::Union {
            value: Some(Box::new(5i64.into_literal())),
            r#type: None,
        })));
        assert_eq!(i64::from_literal(&union).unwrap(), 5);
        assert_eq!(Option::<i64>::from_literal(&none()).unwrap(), None);
        assert_eq!(Option::<i64>::if_absent(), Some(None));
        assert_eq!(i64::if_absent(), None);
    }
}
