//! Protocol-neutral views of Flyte 1 and Flyte 2 request and response messages.
//!
//! Flyte 2's `flyteidl2.core` types are a wire-compatible superset of Flyte 1's `flyteidl.core`
//! (same field numbers and types; `VariableMap`'s map is encoded exactly like v2's repeated
//! key/value entries). So one set of Rust types, Flyte 1's, reads both protocols: these structs
//! declare the fields where the two request messages differ (v2 `Inputs` is an ordered list of
//! named literals, v2 adds `connection`) and decode straight from the received bytes, without a
//! second parse. Unknown fields (newer than our `.proto` files) are skipped.

use std::collections::BTreeMap;

use agent_proto::{
    flyteidl::core,
    walk::{each_field, len_field, string_field, Read},
};
use bytes::Bytes;
use prost::Message;

/// `flyteidl2.task.NamedLiteral` with a Flyte 1 literal inside (wire-compatible).
#[derive(Clone, PartialEq, Message)]
pub(crate) struct NamedLiteral {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub value: Option<core::Literal>,
}

/// `flyteidl2.task.Inputs` / `Outputs`: literals in order.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct NamedLiterals {
    #[prost(message, repeated, tag = "1")]
    pub literals: Vec<NamedLiteral>,
}

/// `flyteidl2.core.Connection`.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct Connection {
    #[prost(string, tag = "1")]
    pub task_type: String,
    #[prost(btree_map = "string, string", tag = "2")]
    pub secrets: BTreeMap<String, String>,
    #[prost(btree_map = "string, string", tag = "3")]
    pub configs: BTreeMap<String, String>,
}

/// Get and Delete in both protocols: field 2 `resource_meta`, 4 `output_prefix` (Get), 5
/// `connection` (v2).
#[derive(Clone, PartialEq, Message)]
pub(crate) struct MetaRequest {
    #[prost(bytes = "bytes", tag = "2")]
    pub resource_meta: Bytes,
    #[prost(string, tag = "4")]
    pub output_prefix: String,
    #[prost(message, optional, tag = "5")]
    pub connection: Option<Connection>,
}

/// `GetTaskMetricsRequest` (both protocols number these fields alike).
#[derive(Clone, PartialEq, Message)]
pub(crate) struct MetricsRequest {
    #[prost(bytes = "bytes", tag = "2")]
    pub resource_meta: Bytes,
    #[prost(string, repeated, tag = "3")]
    pub queries: Vec<String>,
    #[prost(message, optional, tag = "4")]
    pub start_time: Option<prost_types::Timestamp>,
    #[prost(message, optional, tag = "5")]
    pub end_time: Option<prost_types::Timestamp>,
    #[prost(message, optional, tag = "6")]
    pub step: Option<prost_types::Duration>,
}

/// `GetTaskLogsRequest` (both protocols).
#[derive(Clone, PartialEq, Message)]
pub(crate) struct LogsRequest {
    #[prost(bytes = "bytes", tag = "2")]
    pub resource_meta: Bytes,
    #[prost(uint64, tag = "3")]
    pub lines: u64,
    #[prost(string, tag = "4")]
    pub token: String,
}

/// Flyte 2 `Resource`: outputs as an ordered list, no `state`, no `agent_error`.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct ResourceV2 {
    #[prost(message, optional, tag = "2")]
    pub outputs: Option<NamedLiterals>,
    #[prost(string, tag = "3")]
    pub message: String,
    #[prost(message, repeated, tag = "4")]
    pub log_links: Vec<core::TaskLog>,
    #[prost(enumeration = "core::task_execution::Phase", tag = "5")]
    pub phase: i32,
    #[prost(message, optional, tag = "6")]
    pub custom_info: Option<prost_types::Struct>,
}

/// Flyte 2 `GetTaskResponse`.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct GetResponseV2 {
    #[prost(message, optional, tag = "1")]
    pub resource: Option<ResourceV2>,
}

/// A request's parts, each kept encoded: Flyte 1 and Flyte 2 `CreateTaskRequest` (field 5,
/// `connection`, exists only in Flyte 2). Decoding into `Bytes` from `Bytes` slices, no copy.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct CreateParts {
    #[prost(bytes = "bytes", tag = "1")]
    pub inputs: Bytes,
    #[prost(bytes = "bytes", tag = "2")]
    pub template: Bytes,
    #[prost(string, tag = "3")]
    pub output_prefix: String,
    #[prost(bytes = "bytes", tag = "4")]
    pub task_execution_metadata: Bytes,
    #[prost(message, optional, tag = "5")]
    pub connection: Option<Connection>,
}

/// agent-host's `ExecuteRequest`, its parts kept encoded.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct ExecuteParts {
    #[prost(bytes = "bytes", tag = "1")]
    pub header: Bytes,
    #[prost(bytes = "bytes", tag = "2")]
    pub inputs: Bytes,
}

/// Flyte 1 `CreateRequestHeader`, its parts kept encoded.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct HeaderParts {
    #[prost(bytes = "bytes", tag = "1")]
    pub template: Bytes,
    #[prost(string, tag = "2")]
    pub output_prefix: String,
    #[prost(bytes = "bytes", tag = "3")]
    pub task_execution_metadata: Bytes,
}

/// A message field seen again merges into what was read before (protobuf's rule).
fn merge_message<M: Message + Default>(slot: &mut Option<M>, payload: &[u8]) -> Read<()> {
    slot.get_or_insert_with(M::default).merge(payload).map_err(|e| e.to_string())
}

// The readers below walk the request's fields ([`agent_proto::walk`]) instead of decoding it
// with prost: the same checks and the same result (tests compare them), without moving the
// parts through prost's generic decode. Each part is a slice of the request's buffer.

impl CreateParts {
    pub(crate) fn read(raw: &Bytes) -> Read<Self> {
        let (mut inputs, mut template, mut prefix, mut metadata, mut connection) = (&[][..], &[][..], "", &[][..], None);
        each_field(raw, |tag, wire_type, buf| {
            match tag {
                1 => inputs = len_field(wire_type, buf)?,
                2 => template = len_field(wire_type, buf)?,
                3 => prefix = string_field(wire_type, buf)?,
                4 => metadata = len_field(wire_type, buf)?,
                5 => merge_message(&mut connection, len_field(wire_type, buf)?)?,
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        Ok(CreateParts {
            inputs: raw.slice_ref(inputs),
            template: raw.slice_ref(template),
            output_prefix: prefix.to_string(),
            task_execution_metadata: raw.slice_ref(metadata),
            connection,
        })
    }
}

impl ExecuteParts {
    pub(crate) fn read(raw: &Bytes) -> Read<Self> {
        let (mut header, mut inputs) = (&[][..], &[][..]);
        each_field(raw, |tag, wire_type, buf| {
            match tag {
                1 => header = len_field(wire_type, buf)?,
                2 => inputs = len_field(wire_type, buf)?,
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        Ok(ExecuteParts { header: raw.slice_ref(header), inputs: raw.slice_ref(inputs) })
    }
}

impl HeaderParts {
    pub(crate) fn read(raw: &Bytes) -> Read<Self> {
        let (mut template, mut prefix, mut metadata) = (&[][..], "", &[][..]);
        each_field(raw, |tag, wire_type, buf| {
            match tag {
                1 => template = len_field(wire_type, buf)?,
                2 => prefix = string_field(wire_type, buf)?,
                3 => metadata = len_field(wire_type, buf)?,
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        Ok(HeaderParts {
            template: raw.slice_ref(template),
            output_prefix: prefix.to_string(),
            task_execution_metadata: raw.slice_ref(metadata),
        })
    }
}

impl MetaRequest {
    /// `output_prefix` is checked (prost would refuse a request whose prefix is not UTF-8) but
    /// not kept: nothing reads it.
    pub(crate) fn read(raw: &Bytes) -> Read<(Bytes, Option<Connection>)> {
        let (mut meta, mut connection) = (&[][..], None);
        each_field(raw, |tag, wire_type, buf| {
            match tag {
                2 => meta = len_field(wire_type, buf)?,
                4 => drop(string_field(wire_type, buf)?),
                5 => merge_message(&mut connection, len_field(wire_type, buf)?)?,
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        Ok((raw.slice_ref(meta), connection))
    }
}

/// The literals of an encoded `LiteralMap` (`list: false`; sorted by name, the last of a
/// repeated name kept, as a decoded map is) or Flyte 2 `Inputs` (`list: true`; in order), each
/// literal still encoded. Both keep their entries in field 1 as `{ string name = 1; Literal
/// value = 2; }` (a map entry and a `NamedLiteral` alike). Names and literals borrow `raw`.
///
/// `None` for anything prost would refuse, and for what this reader does not take apart the
/// way prost does (an entry with its literal sent twice, which prost merges; groups): the
/// caller then leaves the bytes to prost. Each literal received, a replaced one too, must pass
/// `check`.
pub(crate) fn literal_entries(raw: &Bytes, list: bool, check: impl Fn(&[u8]) -> bool) -> Option<Vec<(&str, Bytes)>> {
    use crate::custom::{next_field, Field};
    let mut out: Vec<(&str, Bytes)> = Vec::new();
    let mut buf = &raw[..];
    while !buf.is_empty() {
        let mut entry = match next_field(&mut buf).ok()? {
            (1, Field::Len(entry)) => entry,
            (1, _) => return None,
            _ => continue,
        };
        let (mut name, mut value) = ("", None);
        while !entry.is_empty() {
            match next_field(&mut entry).ok()? {
                (1, Field::Len(n)) => name = agent_proto::walk::utf8(n)?,
                (2, Field::Len(v)) if value.is_none() => value = Some(v),
                (1 | 2, _) => return None,
                _ => {}
            }
        }
        let value = value.unwrap_or_default();
        if !check(value) {
            return None;
        }
        out.push((name, raw.slice_ref(value)));
    }
    if !list {
        let kept = map_order(&mut out, |e| e.0);
        out.truncate(kept);
    }
    Some(out)
}

/// Puts `entries` in a Flyte 1 map's order: sorted by `name`, one entry per name, the last one
/// given (as a decoded map keeps it). Returns how many entries to keep, at the front: the
/// caller truncates. Entries already sorted and unique (a map arrives so) are left as they are.
pub(crate) fn map_order<T>(entries: &mut [T], name: impl Fn(&T) -> &str) -> usize {
    if entries.is_sorted_by(|a, b| name(a) < name(b)) {
        return entries.len();
    }
    // Stable: among equal names the last given stays last, and is the one kept.
    entries.sort_by(|a, b| name(a).cmp(name(b)));
    let mut kept = 0;
    for i in 0..entries.len() {
        if entries.get(i + 1).is_none_or(|next| name(next) != name(&entries[i])) {
            entries.swap(kept, i);
            kept += 1;
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_order_is_a_maps_order_keeping_the_last_of_each_name() {
        let mut next = crate::mutate::generator(7);
        for len in 0..40 {
            // Names from a small set, so that most lists repeat some; values number the entries.
            let entries: Vec<(&str, usize)> = (0..len).map(|i| (["a", "b", "c", "", "d"][next(5)], i)).collect();
            let map: std::collections::BTreeMap<&str, usize> = entries.iter().copied().collect();
            let mut ordered = entries.clone();
            let kept = map_order(&mut ordered, |e| e.0);
            ordered.truncate(kept);
            assert_eq!(ordered, map.into_iter().collect::<Vec<_>>(), "{entries:?}");
        }
    }
    use agent_proto::{agenthost::plugin::v1 as pb, flyteidl::admin, flyteidl2};

    /// Requests of each kind read here: parts set and left out, repeated (the later `bytes`
    /// or `string` wins, a `connection` seen twice merges) and among unknown fields of every
    /// wire type.
    fn requests() -> Vec<Vec<u8>> {
        let template = core::TaskTemplate { r#type: "echo_async".into(), task_type_version: 1, ..Default::default() };
        let inputs = core::LiteralMap { literals: [("a".to_string(), core::Literal::default())].into() };
        let metadata = admin::TaskExecutionMetadata { namespace: "ns".into(), ..Default::default() };
        let v1 = |prefix: &str| {
            admin::CreateTaskRequest {
                inputs: Some(inputs.clone()),
                template: Some(template.clone()),
                output_prefix: prefix.into(),
                task_execution_metadata: Some(metadata.clone()),
            }
            .encode_to_vec()
        };
        let connection = |k: &str, v: &str| flyteidl2::core::Connection {
            task_type: "t".into(),
            secrets: [(k.to_string(), v.to_string())].into(),
            configs: [("c".to_string(), k.to_string())].into(),
        };
        let v2 = |k: &str| {
            flyteidl2::connector::CreateTaskRequest {
                output_prefix: "s3://v2".into(),
                connection: Some(connection(k, "secret")),
                ..Default::default()
            }
            .encode_to_vec()
        };
        let header = admin::CreateRequestHeader { template: Some(template.clone()), output_prefix: "s3://h".into(), ..Default::default() };
        let execute = pb::ExecuteRequest { header: Some(header.clone()), inputs: Some(inputs.clone()) }.encode_to_vec();
        let get = |meta: &'static [u8], k: &str| {
            flyteidl2::connector::GetTaskRequest {
                resource_meta: Bytes::from_static(meta),
                output_prefix: "s3://g".into(),
                connection: Some(connection(k, "v")),
                ..Default::default()
            }
            .encode_to_vec()
        };
        let unknown: Vec<u8> = [
            &[0xc0, 0x02, 0x96, 0x01][..],
            &[0xc9, 0x02, 1, 2, 3, 4, 5, 6, 7, 8],
            &[0xd3, 0x02, 0x0a, 0x01, b'z', 0xd4, 0x02],
            &[0xdd, 0x02, 9, 9, 9, 9],
        ]
        .concat();
        let mut all = vec![
            v1("s3://out"),
            v1(""),
            [v1("first"), v1("second")].concat(),
            v2("k1"),
            [v2("k1"), v2("k2")].concat(),
            header.encode_to_vec(),
            execute.clone(),
            [execute, pb::ExecuteRequest { header: None, inputs: Some(core::LiteralMap::default()) }.encode_to_vec()].concat(),
            get(b"{\"a\":1}", "k"),
            [get(b"one", "k1"), get(b"", "k2")].concat(),
            admin::GetTaskRequest { resource_meta: Bytes::from_static(b"m"), ..Default::default() }.encode_to_vec(),
            Vec::new(),
        ];
        let with_unknown: Vec<Vec<u8>> = all.iter().map(|m| [&unknown[..], m, &unknown[..]].concat()).collect();
        all.extend(with_unknown);
        all
    }

    /// Whether every reader agrees with prost's decode of the same message on `body`.
    fn agrees(body: &[u8]) -> Result<(), String> {
        let raw = Bytes::copy_from_slice(body);
        let create = (CreateParts::read(&raw).ok(), CreateParts::decode(body).ok());
        let execute = (ExecuteParts::read(&raw).ok(), ExecuteParts::decode(body).ok());
        let header = (HeaderParts::read(&raw).ok(), HeaderParts::decode(body).ok());
        let meta = (MetaRequest::read(&raw).ok(), MetaRequest::decode(body).ok().map(|m| (m.resource_meta, m.connection)));
        for (kind, same) in [
            ("create", create.0 == create.1),
            ("execute", execute.0 == execute.1),
            ("header", header.0 == header.1),
            ("meta", meta.0 == meta.1),
        ] {
            if !same {
                return Err(format!("{kind} disagrees with prost on {body:02x?}"));
            }
        }
        Ok(())
    }

    #[test]
    fn the_readers_read_what_prost_decodes() {
        let mut kept = 0;
        for body in requests() {
            agrees(&body).unwrap();
            let raw = Bytes::from(body);
            kept += usize::from(CreateParts::read(&raw).is_ok_and(|p| !p.output_prefix.is_empty() || p.connection.is_some()));
        }
        assert!(kept >= 8, "the requests carry parts ({kept})");
    }

    #[test]
    fn the_readers_refuse_what_prost_refuses() {
        let mut next = crate::mutate::generator(0x2545_f491_4f6c_dd1d);
        let (mut refused, mut read) = (0, 0);
        for body in requests().into_iter().filter(|b| !b.is_empty()) {
            for _ in 0..300 {
                let m = crate::mutate::mutated(&body, &mut next);
                agrees(&m).unwrap();
                match CreateParts::decode(m.as_slice()) {
                    Ok(_) => read += 1,
                    Err(_) => refused += 1,
                }
            }
        }
        assert!(refused > 500 && read > 500, "both outcomes are exercised: {refused} refused, {read} read");
    }
}
