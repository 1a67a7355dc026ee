//! Just enough MessagePack for `exec`: JSON values to msgpack and back, as flytekit encodes
//! untyped `dict`s and dataclasses (`Scalar.binary` tagged `"msgpack"`).
//!
//! Encoding picks the smallest form of each value (as msgpack encoders do); decoding reads
//! every form of nil, booleans, integers, floats, strings, binaries (as hex text), arrays and
//! maps (non-string keys as their JSON text). Extension types are refused.

use serde_json::{Map, Number, Value};

/// `value` as msgpack.
pub fn encode(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    write(&mut out, value);
    out
}

fn write_len(out: &mut Vec<u8>, len: usize, fix: Option<(u8, usize)>, markers: [u8; 3]) {
    match fix {
        Some((base, limit)) if len < limit => out.push(base | len as u8),
        _ if len <= 0xff && markers[0] != 0 => out.extend([markers[0], len as u8]),
        _ if len <= 0xffff => {
            out.push(markers[1]);
            out.extend((len as u16).to_be_bytes());
        }
        _ => {
            out.push(markers[2]);
            out.extend((len as u32).to_be_bytes());
        }
    }
}

fn write_int(out: &mut Vec<u8>, i: i64) {
    if (-32..=0x7f).contains(&i) {
        // Positive and negative fixint: the value is its own byte.
        out.push(i as i8 as u8);
    } else if (0..=0xff).contains(&i) {
        out.extend([0xcc, i as u8]);
    } else if (0..=0xffff).contains(&i) {
        out.push(0xcd);
        out.extend((i as u16).to_be_bytes());
    } else if (0..=0xffff_ffff).contains(&i) {
        out.push(0xce);
        out.extend((i as u32).to_be_bytes());
    } else if i > 0 {
        out.push(0xcf);
        out.extend((i as u64).to_be_bytes());
    } else if i >= -0x80 {
        out.extend([0xd0, i as i8 as u8]);
    } else if i >= -0x8000 {
        out.push(0xd1);
        out.extend((i as i16).to_be_bytes());
    } else if i >= -0x8000_0000 {
        out.push(0xd2);
        out.extend((i as i32).to_be_bytes());
    } else {
        out.push(0xd3);
        out.extend(i.to_be_bytes());
    }
}

fn write(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => out.push(0xc0),
        Value::Bool(b) => out.push(if *b { 0xc3 } else { 0xc2 }),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => write_int(out, i),
            (None, Some(u)) => {
                out.push(0xcf);
                out.extend(u.to_be_bytes());
            }
            _ => {
                out.push(0xcb);
                out.extend(n.as_f64().unwrap_or(f64::NAN).to_be_bytes());
            }
        },
        Value::String(s) => {
            write_len(out, s.len(), Some((0xa0, 32)), [0xd9, 0xda, 0xdb]);
            out.extend(s.as_bytes());
        }
        Value::Array(items) => {
            write_len(out, items.len(), Some((0x90, 16)), [0, 0xdc, 0xdd]);
            items.iter().for_each(|v| write(out, v));
        }
        Value::Object(map) => {
            write_len(out, map.len(), Some((0x80, 16)), [0, 0xde, 0xdf]);
            for (k, v) in map {
                write(out, &Value::String(k.clone()));
                write(out, v);
            }
        }
    }
}

/// One msgpack value as JSON; the whole input must be that one value.
pub fn decode(bytes: &[u8]) -> Result<Value, String> {
    let mut reader = Reader { bytes, at: 0 };
    let value = reader.value(0)?;
    if reader.at != bytes.len() {
        return Err(format!("{} bytes left after the first value", bytes.len() - reader.at));
    }
    Ok(value)
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len()).ok_or("truncated msgpack")?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn uint(&mut self, n: usize) -> Result<u64, String> {
        Ok(self.take(n)?.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    }

    fn int(&mut self, n: usize) -> Result<i64, String> {
        let raw = self.uint(n)?;
        let shift = 64 - 8 * n as u32;
        Ok(((raw << shift) as i64) >> shift)
    }

    fn text(&mut self, len: usize) -> Result<Value, String> {
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map(Value::String).map_err(|_| "a msgpack string is not UTF-8".to_string())
    }

    fn binary(&mut self, len: usize) -> Result<Value, String> {
        Ok(Value::String(self.take(len)?.iter().map(|b| format!("{b:02x}")).collect()))
    }

    fn array(&mut self, len: usize, depth: usize) -> Result<Value, String> {
        (0..len).map(|_| self.value(depth + 1)).collect::<Result<Vec<_>, _>>().map(Value::Array)
    }

    fn map(&mut self, len: usize, depth: usize) -> Result<Value, String> {
        let mut map = Map::new();
        for _ in 0..len {
            let key = match self.value(depth + 1)? {
                Value::String(s) => s,
                other => other.to_string(),
            };
            map.insert(key, self.value(depth + 1)?);
        }
        Ok(Value::Object(map))
    }

    fn value(&mut self, depth: usize) -> Result<Value, String> {
        if depth > 256 {
            return Err("msgpack nested too deeply".into());
        }
        let marker = self.take(1)?[0];
        let n = |v: u64| Value::Number(Number::from(v));
        match marker {
            0x00..=0x7f => Ok(n(u64::from(marker))),
            0x80..=0x8f => self.map(usize::from(marker & 0x0f), depth),
            0x90..=0x9f => self.array(usize::from(marker & 0x0f), depth),
            0xa0..=0xbf => self.text(usize::from(marker & 0x1f)),
            0xc0 => Ok(Value::Null),
            0xc2 => Ok(Value::Bool(false)),
            0xc3 => Ok(Value::Bool(true)),
            0xc4..=0xc6 => {
                let len = self.uint(1 << (marker - 0xc4))? as usize;
                self.binary(len)
            }
            0xca => Ok(Number::from_f64(f64::from(f32::from_bits(self.uint(4)? as u32))).map(Value::Number).unwrap_or(Value::Null)),
            0xcb => Ok(Number::from_f64(f64::from_bits(self.uint(8)?)).map(Value::Number).unwrap_or(Value::Null)),
            0xcc..=0xcf => Ok(n(self.uint(1 << (marker - 0xcc))?)),
            0xd0..=0xd3 => Ok(Value::Number(Number::from(self.int(1 << (marker - 0xd0))?))),
            0xd9..=0xdb => {
                let len = self.uint(1 << (marker - 0xd9))? as usize;
                self.text(len)
            }
            0xdc | 0xdd => {
                let len = self.uint(if marker == 0xdc { 2 } else { 4 })? as usize;
                self.array(len, depth)
            }
            0xde | 0xdf => {
                let len = self.uint(if marker == 0xde { 2 } else { 4 })? as usize;
                self.map(len, depth)
            }
            0xe0..=0xff => Ok(Value::Number(Number::from(i64::from(marker as i8)))),
            other => Err(format!("msgpack type 0x{other:02x} (an extension) has no JSON form")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn known_encodings() {
        // From the msgpack specification's formats.
        assert_eq!(encode(&json!({"compact": true, "schema": 0})), b"\x82\xa7compact\xc3\xa6schema\x00");
        assert_eq!(encode(&json!(-1)), [0xff]);
        assert_eq!(encode(&json!(200)), [0xcc, 200]);
        assert_eq!(encode(&json!(-200)), [0xd1, 0xff, 0x38]);
        assert_eq!(encode(&json!(1.5)), [0xcb, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0]);
        assert_eq!(encode(&json!("x".repeat(40)))[..2], [0xd9, 40]);
    }

    #[test]
    fn round_trips() {
        let v = json!({"status_code": 200, "response_data": "ok", "n": [-70000, 4294967296u64, 0.25, null, false], "nested": {"a": {}}});
        assert_eq!(decode(&encode(&v)).unwrap(), v);
        let long = json!({"items": (0..70).collect::<Vec<_>>(), "s": "y".repeat(300)});
        assert_eq!(decode(&encode(&long)).unwrap(), long);
    }

    #[test]
    fn refuses_truncated_and_trailing_bytes() {
        assert!(decode(&[0x92, 0x01]).unwrap_err().contains("truncated"));
        assert!(decode(&[0x01, 0x02]).unwrap_err().contains("left after"));
        assert_eq!(decode(&[0xc4, 2, 0xab, 0xcd]).unwrap(), json!("abcd"));
    }
}
