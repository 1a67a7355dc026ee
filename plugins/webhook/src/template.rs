//! flytekit's placeholders (`flytekit.utils.dict_formatter.format_dict`) and the Python forms of
//! the values they produce, so that a task template means the same here as in flytekit.
//!
//! Shared by the webhook and REST job plugins (`plugins/rest-job` includes this file with
//! `#[path]`: two plugin libraries cannot link each other).
//!
//! * A string in the template that holds `{a.b}` placeholders gets each replaced by the value at
//!   that dotted path of the scope (`{inputs.x}`: the input `x`), in Python's `str()` form; a
//!   string that is exactly one placeholder becomes the value itself (its type kept).
//! * Placeholders without a dot are left alone unless the scope names them (the REST job agent's
//!   `{job_id}`, `{idempotency_key}`).
//! * Inputs read as flytekit's `literal_string_repr` reads them: primitives as themselves,
//!   datetimes as ISO 8601 text, durations as seconds, files and datasets as their URI, msgpack
//!   values as JSON text, generic structs as objects (numbers as floats).
//! * Numbers keep Python's int / float distinction (`serde_json::Number` is an `i64` or an
//!   `f64`), so a `Struct` number (always a double) stays a float as it is in flytekit.

use std::collections::BTreeMap;

use agent_plugin_api::{
    flyte::core::{literal, primitive, scalar, Literal},
    Literals,
};
use serde_json::{Map, Number, Value};

/// A protobuf `Struct` (e.g. `TaskTemplate.custom`) as Python sees it: numbers are floats.
pub fn struct_value(s: &prost_types::Struct) -> Value {
    Value::Object(s.fields.iter().map(|(k, v)| (k.clone(), proto_value(v))).collect())
}

fn proto_value(v: &prost_types::Value) -> Value {
    use prost_types::value::Kind;
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::NumberValue(n)) => float(*n),
        Some(Kind::StringValue(s)) => Value::String(s.clone()),
        Some(Kind::ListValue(l)) => Value::Array(l.values.iter().map(proto_value).collect()),
        Some(Kind::StructValue(s)) => struct_value(s),
    }
}

/// A float as a JSON number (`NaN` and infinities, which JSON lacks, as Python's text).
fn float(f: f64) -> Value {
    Number::from_f64(f).map(Value::Number).unwrap_or_else(|| Value::String(py_float(f)))
}

/// The inputs as flytekit's `literal_map_string_repr` gives them: an object by name.
pub fn inputs_value(inputs: &Literals) -> Value {
    Value::Object(inputs.iter().map(|(name, l)| (name.to_string(), literal_value(l))).collect())
}

/// One literal as flytekit's `literal_string_repr` gives it.
pub fn literal_value(l: &Literal) -> Value {
    match &l.value {
        None => Value::Null,
        Some(literal::Value::Collection(c)) => Value::Array(c.literals.iter().map(literal_value).collect()),
        Some(literal::Value::Map(m)) => Value::Object(m.literals.iter().map(|(k, v)| (k.clone(), literal_value(v))).collect()),
        Some(literal::Value::OffloadedMetadata(o)) => Value::String(format!("Offloaded literal metadata: {}", o.uri)),
        Some(literal::Value::Scalar(s)) => match &s.value {
            None => Value::Null,
            Some(scalar::Value::Primitive(p)) => match &p.value {
                None => Value::Null,
                Some(primitive::Value::Integer(i)) => Value::from(*i),
                Some(primitive::Value::FloatValue(f)) => float(*f),
                Some(primitive::Value::StringValue(s)) => Value::String(s.clone()),
                Some(primitive::Value::Boolean(b)) => Value::Bool(*b),
                Some(primitive::Value::Datetime(t)) => Value::String(isoformat(t)),
                Some(primitive::Value::Duration(d)) => float(d.seconds as f64 + d.nanos as f64 / 1e9),
            },
            Some(scalar::Value::NoneType(_)) => Value::Null,
            Some(scalar::Value::Error(e)) => Value::String(e.message.clone()),
            Some(scalar::Value::StructuredDataset(d)) => Value::String(d.uri.clone()),
            Some(scalar::Value::Schema(s)) => Value::String(s.uri.clone()),
            Some(scalar::Value::Blob(b)) => Value::String(b.uri.clone()),
            Some(scalar::Value::Binary(b)) if b.tag == "msgpack" => match rmp_serde::from_slice::<Value>(&b.value) {
                Ok(v) => Value::String(py_json_dumps(&v)),
                Err(_) => Value::String(base64(&b.value)),
            },
            Some(scalar::Value::Binary(b)) => Value::String(base64(&b.value)),
            Some(scalar::Value::Generic(g)) => struct_value(g),
            Some(scalar::Value::Union(u)) => u.value.as_deref().map(literal_value).unwrap_or(Value::Null),
        },
    }
}

/// Resolves a secret by group and key, or says why it cannot.
pub type SecretLookup<'a> = dyn Fn(&str, &str) -> Result<String, String> + Sync + 'a;

/// What placeholders may name.
#[derive(Default)]
pub struct Scope<'a> {
    /// The tree dotted placeholders index (`{"inputs": {...}}`).
    pub tree: Map<String, Value>,
    /// Values of placeholders without a dot (`{job_id}`), as text.
    pub names: BTreeMap<String, String>,
    /// Resolves `{secrets.<group>.<key>}` (and `{secrets.<key>}`); `None`: no secrets.
    pub secret: Option<&'a SecretLookup<'a>>,
}

impl<'a> Scope<'a> {
    /// A scope holding the inputs under `inputs`, as flytekit's webhook agent builds it.
    pub fn with_inputs(inputs: &Literals) -> Self {
        let mut tree = Map::new();
        tree.insert("inputs".into(), inputs_value(inputs));
        Self { tree, ..Self::default() }
    }

    fn dotted(&self, path: &str) -> Result<Value, String> {
        let keys: Vec<&str> = path.split('.').collect();
        if let (Some(secret), ["secrets", rest @ ..]) = (self.secret, keys.as_slice()) {
            return match rest {
                [key] => secret("", key).map(Value::String),
                [group, key] => secret(group, key).map(Value::String),
                _ => Err(format!("{{{path}}}: a secret is {{secrets.<group>.<key>}} or {{secrets.<key>}}")),
            };
        }
        // flytekit's get_nested_value: "Could not find the key {key} in {d}."
        let mut current = Value::Object(self.tree.clone());
        for key in keys {
            let next = match &current {
                Value::Object(m) => m.get(key).cloned(),
                _ => None,
            };
            match next {
                Some(v) => current = v,
                None => return Err(format!("Could not find the key {key} in {}.", py_str(&current))),
            }
        }
        Ok(current)
    }
}

/// `format_dict`: replaces the placeholders of every string in `value`, recursively.
pub fn format(value: Value, scope: &Scope<'_>) -> Result<Value, String> {
    match value {
        Value::String(s) if s.contains('{') && s.contains('}') => format_str(s, scope),
        Value::Array(items) => items.into_iter().map(|v| format(v, scope)).collect::<Result<_, _>>().map(Value::Array),
        Value::Object(m) => m.into_iter().map(|(k, v)| Ok((k, format(v, scope)?))).collect::<Result<_, String>>().map(Value::Object),
        other => Ok(other),
    }
}

fn format_str(original: String, scope: &Scope<'_>) -> Result<Value, String> {
    let mut current = original.clone();
    for name in placeholders(&original) {
        let placeholder = format!("{{{name}}}");
        if name.contains('.') {
            let value = scope.dotted(name)?;
            if placeholder == current {
                return Ok(value);
            }
            current = current.replace(&placeholder, &py_str(&value));
        } else if let Some(v) = scope.names.get(name) {
            current = current.replace(&placeholder, v);
        }
    }
    Ok(Value::String(current))
}

/// The names of Python's `re.findall(r"\{([^}]+)\}", s)`.
fn placeholders(s: &str) -> Vec<&str> {
    let mut found = Vec::new();
    let mut rest = s;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        match after.find('}') {
            Some(0) => rest = after,
            Some(close) => {
                found.push(&after[..close]);
                rest = &after[close + 1..];
            }
            None => break,
        }
    }
    found
}

/// Python's truthiness of a value (`if show_data:`).
pub fn py_truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(m) => !m.is_empty(),
    }
}

/// Python's `str(v)`.
pub fn py_str(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => py_repr(other),
    }
}

/// Python's `repr(v)`.
pub fn py_repr(v: &Value) -> String {
    match v {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Number(n) => number(n, py_float),
        Value::String(s) => py_repr_str(s),
        Value::Array(a) => format!("[{}]", a.iter().map(py_repr).collect::<Vec<_>>().join(", ")),
        Value::Object(m) => {
            format!("{{{}}}", m.iter().map(|(k, v)| format!("{}: {}", py_repr_str(k), py_repr(v))).collect::<Vec<_>>().join(", "))
        }
    }
}

fn number(n: &Number, float: fn(f64) -> String) -> String {
    if n.is_f64() {
        float(n.as_f64().unwrap_or(f64::NAN))
    } else {
        n.to_string()
    }
}

fn py_repr_str(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') { '"' } else { '\'' };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// Python's `repr(float)`: the shortest text that reads back, in exponent form below 1e-4 and
/// from 1e16 on.
pub fn py_float(f: f64) -> String {
    if f.is_nan() {
        return "nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf" } else { "-inf" }.into();
    }
    if f == 0.0 {
        return if f.is_sign_negative() { "-0.0" } else { "0.0" }.into();
    }
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if (-4..16).contains(&exp) {
        let fixed = f.to_string();
        if fixed.contains('.') {
            fixed
        } else {
            fixed + ".0"
        }
    } else {
        format!("{mantissa}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs())
    }
}

/// Python's `json.dumps(v)` (default separators `", "` and `": "`, non-ASCII escaped).
pub fn py_json_dumps(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => number(n, |f| match py_float(f).as_str() {
            "nan" => "NaN".into(),
            "inf" => "Infinity".into(),
            "-inf" => "-Infinity".into(),
            other => other.into(),
        }),
        Value::String(s) => json_str(s),
        Value::Array(a) => format!("[{}]", a.iter().map(py_json_dumps).collect::<Vec<_>>().join(", ")),
        Value::Object(m) => {
            format!("{{{}}}", m.iter().map(|(k, v)| format!("{}: {}", json_str(k), py_json_dumps(v))).collect::<Vec<_>>().join(", "))
        }
    }
}

fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Python's `datetime.isoformat()` of a UTC timestamp (microseconds, `+00:00`).
pub fn isoformat(t: &prost_types::Timestamp) -> String {
    let c = agent_plugin_api::value::UtcTime::of(t);
    let micros = c.nanos / 1000;
    let frac = if micros > 0 { format!(".{micros:06}") } else { String::new() };
    format!("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}{frac}+00:00", c.year, c.month, c.day, c.hour, c.minute, c.second)
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = (u32::from(chunk[0]) << 16) | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8) | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn scope() -> Scope<'static> {
        Scope::with_inputs(&Literals::new().with("x", 3).with("name", "Ada").with("ratio", 0.5).with("tags", vec!["a", "b"]))
    }

    #[test]
    fn placeholders_follow_flytekits_regex() {
        assert_eq!(placeholders("{a.b} and {c}"), ["a.b", "c"]);
        assert_eq!(placeholders("{} {x}"), ["x"]);
        assert_eq!(placeholders("{{a.b}}"), ["{a.b"]);
        assert!(placeholders("no braces").is_empty());
    }

    #[test]
    fn a_lone_placeholder_keeps_the_type_and_text_gets_pythons_str() {
        let custom = json!({"n": "{inputs.x}", "s": "x={inputs.x}, r={inputs.ratio}, t={inputs.tags}", "plain": "{foo}", "k": 1.0});
        let out = format(custom, &scope()).unwrap();
        assert_eq!(out["n"], json!(3));
        assert_eq!(out["s"], json!("x=3, r=0.5, t=['a', 'b']"));
        assert_eq!(out["plain"], json!("{foo}"));
        assert!(out["k"].as_f64().is_some());
    }

    #[test]
    fn a_missing_input_is_flytekits_message() {
        let e = format(json!({"u": "http://h/{inputs.y}"}), &scope()).unwrap_err();
        assert_eq!(e, "Could not find the key y in {'name': 'Ada', 'ratio': 0.5, 'tags': ['a', 'b'], 'x': 3}.");
    }

    #[test]
    fn python_forms() {
        assert_eq!(py_float(1.0), "1.0");
        assert_eq!(py_float(1e16), "1e+16");
        assert_eq!(py_float(1.5e-7), "1.5e-07");
        assert_eq!(py_float(0.0001), "0.0001");
        assert_eq!(py_repr(&json!({"a": [null, true, "it's"]})), "{'a': [None, True, \"it's\"]}");
        assert_eq!(py_json_dumps(&json!({"a": [1, 2.5, "é"]})), "{\"a\": [1, 2.5, \"\\u00e9\"]}");
        assert_eq!(isoformat(&prost_types::Timestamp { seconds: 1_714_564_800, nanos: 123_456_000 }), "2024-05-01T12:00:00.123456+00:00");
        assert_eq!(base64(b"hello"), "aGVsbG8=");
    }
}
