//! Flyte literals as JSON, both ways: the `--inputs` file of `exec`, and how it prints outputs.
//!
//! Plain JSON maps onto the obvious literals: integers (`7`), floats (`7.5`, `7.0`), strings,
//! booleans, `null` (none), arrays (lists) and objects (maps of string to value). Everything
//! else is an object with one `$` key:
//!
//! | JSON | literal |
//! |---|---|
//! | `{"$datetime": "2024-05-01T12:00:00Z"}` | datetime (RFC 3339) |
//! | `{"$duration": 90.5}` | duration, in seconds |
//! | `{"$file": "s3://b/k", "format": "csv"}`, `{"$directory": "s3://b/d/"}` | blob (`format` optional) |
//! | `{"$dataset": "s3://b/t", "format": "parquet"}` | structured dataset (`format` optional) |
//! | `{"$struct": {...}}` | generic struct |
//! | `{"$msgpack": <any JSON>}` | binary tagged `msgpack` (flytekit's `dict`s and dataclasses) |
//! | `{"$binary": "<hex>", "tag": "…"}` | any other binary |
//! | `{"$map": {...}}` | a map whose keys start with `$` |
//!
//! Outputs print the same way (so one run's outputs can be the next run's inputs); schemas,
//! errors and offloaded literals print as `{"$schema": uri}`, `{"$error": message}`,
//! `{"$offloaded": uri}`, and a union as the value it carries.

use agent_proto::flyteidl::core::{
    blob_type::BlobDimensionality, literal, primitive, scalar, Binary, Blob, BlobMetadata, BlobType, Literal, LiteralCollection,
    LiteralMap, Primitive, Scalar, StructuredDataset, StructuredDatasetMetadata, StructuredDatasetType, Void,
};
use agent_proto::prost_types::{self, value::Kind, ListValue, Struct};
use serde_json::{json, Map, Value};

use super::msgpack;

const MSGPACK_TAG: &str = "msgpack";

fn scalar(value: scalar::Value) -> Literal {
    Literal { value: Some(literal::Value::Scalar(Box::new(Scalar { value: Some(value) }))), ..Default::default() }
}

fn primitive(value: primitive::Value) -> Literal {
    scalar(scalar::Value::Primitive(Primitive { value: Some(value) }))
}

/// A JSON object of inputs (`{"name": value, …}`) as named literals, in the file's order.
pub fn inputs_from_json(inputs: &Value) -> Result<Vec<(String, Literal)>, String> {
    let Value::Object(map) = inputs else { return Err("the inputs must be a JSON object of name: value".into()) };
    map.iter().map(|(name, v)| from_json(v).map(|l| (name.clone(), l)).map_err(|e| format!("input `{name}`: {e}"))).collect()
}

/// One JSON value as a literal (see the module docs).
pub fn from_json(value: &Value) -> Result<Literal, String> {
    Ok(match value {
        Value::Null => scalar(scalar::Value::NoneType(Void {})),
        Value::Bool(b) => primitive(primitive::Value::Boolean(*b)),
        Value::Number(n) => match n.as_i64() {
            Some(i) => primitive(primitive::Value::Integer(i)),
            None if n.is_u64() => return Err(format!("{n} does not fit a Flyte integer (64-bit signed)")),
            None => primitive(primitive::Value::FloatValue(n.as_f64().unwrap_or(f64::NAN))),
        },
        Value::String(s) => primitive(primitive::Value::StringValue(s.clone())),
        Value::Array(items) => {
            let literals =
                items.iter().enumerate().map(|(i, v)| from_json(v).map_err(|e| format!("[{i}]: {e}"))).collect::<Result<_, _>>()?;
            Literal { value: Some(literal::Value::Collection(LiteralCollection { literals })), ..Default::default() }
        }
        Value::Object(map) => match map.keys().find(|k| k.starts_with('$')) {
            Some(tag) => tagged(tag, map)?,
            None => map_literal(map)?,
        },
    })
}

fn map_literal(map: &Map<String, Value>) -> Result<Literal, String> {
    let literals =
        map.iter().map(|(k, v)| from_json(v).map(|l| (k.clone(), l)).map_err(|e| format!("[{k:?}]: {e}"))).collect::<Result<_, _>>()?;
    Ok(Literal { value: Some(literal::Value::Map(LiteralMap { literals })), ..Default::default() })
}

fn tagged(tag: &str, map: &Map<String, Value>) -> Result<Literal, String> {
    let allowed: &[&str] = match tag {
        "$file" | "$directory" | "$dataset" => &["format"],
        "$binary" => &["tag"],
        _ => &[],
    };
    if let Some(extra) = map.keys().find(|k| *k != tag && !allowed.contains(&k.as_str())) {
        return Err(format!("`{tag}` does not go with `{extra}` (allowed: {allowed:?})"));
    }
    let body = &map[tag];
    let text = |what: &str| body.as_str().map(str::to_string).ok_or_else(|| format!("`{tag}` takes {what}"));
    let format = map.get("format").and_then(Value::as_str).unwrap_or_default().to_string();
    Ok(match tag {
        "$datetime" => primitive(primitive::Value::Datetime(parse_rfc3339(&text("an RFC 3339 time")?)?)),
        "$duration" => {
            let seconds = body.as_f64().filter(|s| s.is_finite()).ok_or_else(|| format!("`{tag}` takes a number of seconds"))?;
            let whole = seconds.trunc();
            primitive(primitive::Value::Duration(prost_types::Duration {
                seconds: whole as i64,
                nanos: ((seconds - whole) * 1e9).round() as i32,
            }))
        }
        "$file" | "$directory" => {
            let dimensionality = if tag == "$file" { BlobDimensionality::Single } else { BlobDimensionality::Multipart } as i32;
            let metadata = BlobMetadata { r#type: Some(BlobType { format, dimensionality }) };
            scalar(scalar::Value::Blob(Blob { metadata: Some(metadata), uri: text("a URI")? }))
        }
        "$dataset" => {
            let metadata =
                StructuredDatasetMetadata { structured_dataset_type: Some(StructuredDatasetType { format, ..Default::default() }) };
            scalar(scalar::Value::StructuredDataset(StructuredDataset { uri: text("a URI")?, metadata: Some(metadata) }))
        }
        "$struct" => match body {
            Value::Object(fields) => scalar(scalar::Value::Generic(to_struct(fields))),
            _ => return Err("`$struct` takes a JSON object".into()),
        },
        "$msgpack" => scalar(scalar::Value::Binary(Binary { value: msgpack::encode(body).into(), tag: MSGPACK_TAG.into() })),
        "$binary" => {
            let tag = map.get("tag").and_then(Value::as_str).unwrap_or_default().to_string();
            scalar(scalar::Value::Binary(Binary { value: parse_hex(&text("hex text")?)?.into(), tag }))
        }
        "$map" => match body {
            Value::Object(m) => map_literal(m)?,
            _ => return Err("`$map` takes a JSON object".into()),
        },
        other => {
            return Err(format!(
                "unknown tag `{other}` (known: $datetime $duration $file $directory $dataset $struct $msgpack $binary $map)"
            ))
        }
    })
}

fn to_struct(fields: &Map<String, Value>) -> Struct {
    Struct { fields: fields.iter().map(|(k, v)| (k.clone(), to_proto_value(v))).collect() }
}

fn to_proto_value(v: &Value) -> prost_types::Value {
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(a) => Kind::ListValue(ListValue { values: a.iter().map(to_proto_value).collect() }),
        Value::Object(m) => Kind::StructValue(to_struct(m)),
    };
    prost_types::Value { kind: Some(kind) }
}

fn from_struct(s: &Struct) -> Value {
    Value::Object(s.fields.iter().map(|(k, v)| (k.clone(), from_proto_value(v))).collect())
}

fn from_proto_value(v: &prost_types::Value) -> Value {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::NumberValue(n)) if n.fract() == 0.0 && n.abs() < 9.0e15 => json!(*n as i64),
        Some(Kind::NumberValue(n)) => json!(n),
        Some(Kind::StringValue(s)) => Value::String(s.clone()),
        Some(Kind::ListValue(l)) => Value::Array(l.values.iter().map(from_proto_value).collect()),
        Some(Kind::StructValue(s)) => from_struct(s),
    }
}

/// Named literals as a JSON object (see the module docs).
pub fn outputs_to_json<'a>(literals: impl IntoIterator<Item = (&'a String, &'a Literal)>) -> Value {
    Value::Object(literals.into_iter().map(|(k, l)| (k.clone(), to_json(l))).collect())
}

/// One literal as JSON (see the module docs).
pub fn to_json(literal: &Literal) -> Value {
    match &literal.value {
        None => Value::Null,
        Some(literal::Value::Collection(c)) => Value::Array(c.literals.iter().map(to_json).collect()),
        Some(literal::Value::Map(m)) => {
            let object: Map<String, Value> = m.literals.iter().map(|(k, l)| (k.clone(), to_json(l))).collect();
            if object.keys().any(|k| k.starts_with('$')) {
                json!({ "$map": object })
            } else {
                Value::Object(object)
            }
        }
        Some(literal::Value::OffloadedMetadata(o)) => json!({ "$offloaded": o.uri }),
        Some(literal::Value::Scalar(s)) => match &s.value {
            None | Some(scalar::Value::NoneType(_)) => Value::Null,
            Some(scalar::Value::Primitive(p)) => match &p.value {
                None => Value::Null,
                Some(primitive::Value::Integer(i)) => json!(i),
                Some(primitive::Value::FloatValue(f)) => json!(f),
                Some(primitive::Value::StringValue(s)) => json!(s),
                Some(primitive::Value::Boolean(b)) => json!(b),
                Some(primitive::Value::Datetime(t)) => json!({ "$datetime": format_rfc3339(t) }),
                Some(primitive::Value::Duration(d)) => json!({ "$duration": d.seconds as f64 + f64::from(d.nanos) / 1e9 }),
            },
            Some(scalar::Value::Blob(b)) => {
                let t = b.metadata.as_ref().and_then(|m| m.r#type.as_ref());
                let tag = if t.is_some_and(|t| t.dimensionality == BlobDimensionality::Multipart as i32) { "$directory" } else { "$file" };
                with_format(json!({ tag: b.uri }), t.map(|t| t.format.as_str()))
            }
            Some(scalar::Value::StructuredDataset(d)) => {
                let format = d.metadata.as_ref().and_then(|m| m.structured_dataset_type.as_ref()).map(|t| t.format.as_str());
                with_format(json!({ "$dataset": d.uri }), format)
            }
            Some(scalar::Value::Generic(s)) => json!({ "$struct": from_struct(s) }),
            Some(scalar::Value::Binary(b)) if b.tag == MSGPACK_TAG => match msgpack::decode(&b.value) {
                Ok(v) => json!({ "$msgpack": v }),
                Err(e) => json!({ "$binary": hex(&b.value), "tag": b.tag, "note": format!("does not decode: {e}") }),
            },
            Some(scalar::Value::Binary(b)) => json!({ "$binary": hex(&b.value), "tag": b.tag }),
            Some(scalar::Value::Schema(s)) => json!({ "$schema": s.uri }),
            Some(scalar::Value::Error(e)) => json!({ "$error": e.message }),
            Some(scalar::Value::Union(u)) => u.value.as_deref().map(to_json).unwrap_or(Value::Null),
        },
    }
}

fn with_format(mut v: Value, format: Option<&str>) -> Value {
    if let Some(f) = format.filter(|f| !f.is_empty()) {
        v["format"] = json!(f);
    }
    v
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_hex(text: &str) -> Result<Vec<u8>, String> {
    if !text.len().is_multiple_of(2) || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("`$binary` takes hex text (two digits per byte)".into());
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).map_err(|e| e.to_string())).collect()
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)` as a timestamp.
fn parse_rfc3339(text: &str) -> Result<prost_types::Timestamp, String> {
    let bad = || format!("{text:?} is not an RFC 3339 time like 2024-05-01T12:00:00Z");
    let b = text.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') || b[13] != b':' || b[16] != b':' {
        return Err(bad());
    }
    let num = |range: std::ops::Range<usize>| {
        text.get(range).filter(|s| s.bytes().all(|c| c.is_ascii_digit())).and_then(|s| s.parse::<i64>().ok()).ok_or_else(bad)
    };
    let (year, month, day, hour, minute, second) = (num(0..4)?, num(5..7)?, num(8..10)?, num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return Err(bad());
    }
    let mut rest = &text[19..];
    let mut nanos = 0i32;
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let padded: String = fraction[..digits].chars().chain(std::iter::repeat('0')).take(9).collect();
        nanos = padded.parse().map_err(|_| bad())?;
        rest = &fraction[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && matches!(&rest[..1], "+" | "-") && &rest[3..4] == ":" => {
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            sign * (num(text.len() - 5..text.len() - 3)? * 3600 + num(text.len() - 2..text.len())? * 60)
        }
        _ => return Err(bad()),
    };
    let seconds = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset;
    Ok(prost_types::Timestamp { seconds, nanos })
}

/// A timestamp as RFC 3339 text in UTC.
fn format_rfc3339(t: &prost_types::Timestamp) -> String {
    let (year, month, day) = civil_from_days(t.seconds.div_euclid(86_400));
    let secs = t.seconds.rem_euclid(86_400);
    let fraction = if t.nanos > 0 { format!(".{:09}", t.nanos).trim_end_matches('0').to_string() } else { String::new() };
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}{fraction}Z", secs / 3600, secs % 3600 / 60, secs % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_round_trips() {
        let inputs = json!({
            "n": 7, "x": 2.5, "whole": 3.0, "s": "hi", "ok": true, "nothing": null,
            "list": [1, [2, 3]], "map": {"a": 1},
            "when": {"$datetime": "2024-02-29T23:59:58.25Z"}, "wait": {"$duration": 90.5},
            "file": {"$file": "s3://b/k.csv", "format": "csv"}, "dir": {"$directory": "s3://b/d/"},
            "table": {"$dataset": "s3://b/t", "format": "parquet"}, "generic": {"$struct": {"k": [1, "v"]}},
            "dict": {"$msgpack": {"status_code": 200, "response_data": "ok"}}, "raw": {"$binary": "00ff", "tag": "x"},
            "dollar": {"$map": {"$k": 1}}
        });
        let literals = inputs_from_json(&inputs).unwrap();
        let back = outputs_to_json(literals.iter().map(|(k, l)| (k, l)));
        assert_eq!(back, inputs);
    }

    #[test]
    fn times_parse_with_offsets() {
        let t = parse_rfc3339("2024-05-01T14:00:00+02:00").unwrap();
        assert_eq!(format_rfc3339(&t), "2024-05-01T12:00:00Z");
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z").unwrap().seconds, 0);
        assert_eq!(format_rfc3339(&prost_types::Timestamp { seconds: -1, nanos: 0 }), "1969-12-31T23:59:59Z");
        assert!(parse_rfc3339("2024-05-01").is_err());
        assert!(parse_rfc3339("2024-13-01T00:00:00Z").is_err());
    }

    #[test]
    fn errors_name_the_input() {
        let e = inputs_from_json(&json!({"a": {"$when": 1}})).unwrap_err();
        assert!(e.starts_with("input `a`: unknown tag `$when`"), "{e}");
        let e = inputs_from_json(&json!({"a": [1, {"$file": 3}]})).unwrap_err();
        assert_eq!(e, "input `a`: [1]: `$file` takes a URI");
        assert!(inputs_from_json(&json!([1])).is_err());
    }
}
