//! What an agent receives (a task to run) and what it answers (a resource).

use std::{borrow::Cow, collections::BTreeMap, sync::OnceLock};

use bytes::Bytes;
use prost::Message;
use serde::de::DeserializeOwned;

use crate::flyte::{
    admin::{LogLine, TaskExecutionMetadata},
    core::{Literal, LiteralMap, TaskExecutionIdentifier, TaskLog, TaskTemplate},
};
use crate::value::{FromLiteral, IntoLiteral};
use crate::{json, AgentError, Phase};

/// Which Flyte protocol a request came in on. Agents rarely need to know: the SDK reads and
/// answers both the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Flyte 1 (`flyteidl.service.*AgentService`), as FlytePropeller calls it.
    V1,
    /// Flyte 2 (`flyteidl2.connector.*ConnectorService`).
    V2,
}

/// Named literals in order: a task's inputs or outputs.
///
/// Flyte 1 sends a map (delivered here sorted by name), Flyte 2 an ordered list (kept in order).
/// Build them from Rust values with [`Literals::with`], read them with [`Literals::read`] (see
/// [`crate::value`] for the types).
///
/// Literals that came encoded (a task's inputs, [`Literals::insert_encoded`]) stay encoded until
/// one is read, and an answer writes them out as they came: an agent that forwards its inputs, or
/// reads a few of many, does not pay to decode and encode again what it only passes on. They are
/// checked when they come in (without decoding them), so reading one later cannot fail.
///
/// ```
/// use agent_plugin_api::Literals;
///
/// let outputs = Literals::new().with("rows", 42).with("table", "sales");
/// assert_eq!(outputs.read::<i64>("rows").unwrap(), 42);
/// assert_eq!(outputs.read::<Option<String>>("missing").unwrap(), None);
/// ```
#[derive(Clone, Default)]
pub struct Literals(Vec<(Name, Slot)>);

/// A literal's name: built in Rust, or a slice of the request it came in, so that a request's
/// inputs are named without a copy (an allocation) each.
#[derive(Clone)]
enum Name {
    Owned(String),
    /// A slice of the request holding UTF-8: made only by [`Name::received`], from a `&str`.
    Received(Bytes),
}

impl Name {
    /// `name`, a `&str` within `raw`, as a slice of `raw`.
    fn received(raw: &Bytes, name: &str) -> Self {
        Name::Received(raw.slice_ref(name.as_bytes()))
    }

    fn as_str(&self) -> &str {
        match self {
            Name::Owned(name) => name,
            // SAFETY: made by `Name::received` from the bytes of a `&str`, and `Bytes` are
            // immutable.
            Name::Received(name) => unsafe { std::str::from_utf8_unchecked(name) },
        }
    }
}

/// One literal of [`Literals`]: built in Rust, or encoded as it came (decoded when first read).
#[derive(Clone)]
pub(crate) enum Slot {
    Decoded(Literal),
    /// Bytes that [`agent_proto::check::literal`] accepted, so they decode.
    Encoded {
        bytes: Bytes,
        decoded: OnceLock<Literal>,
    },
}

impl Slot {
    /// Encoded bytes known to decode (checked by the caller).
    fn encoded(bytes: Bytes) -> Self {
        Slot::Encoded { bytes, decoded: OnceLock::new() }
    }

    pub(crate) fn literal(&self) -> &Literal {
        match self {
            Slot::Decoded(literal) => literal,
            Slot::Encoded { bytes, decoded } => decoded.get_or_init(|| decode_checked(bytes)),
        }
    }

    #[cfg(test)]
    fn into_literal(self) -> Literal {
        match self {
            Slot::Decoded(literal) => literal,
            Slot::Encoded { bytes, decoded } => decoded.into_inner().unwrap_or_else(|| decode_checked(&bytes)),
        }
    }

    /// Length of the literal's encoding: the bytes as they came, for an encoded one.
    pub(crate) fn encoded_len(&self) -> usize {
        match self {
            Slot::Decoded(literal) => literal.encoded_len(),
            Slot::Encoded { bytes, .. } => bytes.len(),
        }
    }

    /// Writes the literal's encoding (without a tag or length).
    pub(crate) fn encode_raw(&self, buf: &mut Vec<u8>) {
        match self {
            Slot::Decoded(literal) => literal.encode_raw(buf),
            Slot::Encoded { bytes, .. } => buf.extend_from_slice(bytes),
        }
    }

    fn to_bytes(&self) -> Bytes {
        match self {
            Slot::Decoded(literal) => literal.encode_to_vec().into(),
            Slot::Encoded { bytes, .. } => bytes.clone(),
        }
    }
}

/// Decodes bytes the check accepted. The check is written to accept only what prost decodes
/// (its tests hold it to that against prost), so a failure here is a bug in the SDK.
fn decode_checked(bytes: &Bytes) -> Literal {
    Literal::decode(bytes.clone()).unwrap_or_else(|e| panic!("a literal accepted by the SDK's check does not decode ({e}): an SDK bug"))
}

/// Whether `bytes` decode as a literal nested with this much of prost's recursion budget left
/// for its fields (see [`agent_proto::check::literal`]).
fn decodes(bytes: &[u8], budget: u32) -> bool {
    agent_proto::check::literal(bytes, budget)
}

/// The recursion budget of a standalone literal's fields (prost's limit).
const STANDALONE: u32 = agent_proto::check::RECURSION_LIMIT;
/// The budget of a literal's fields inside a decoded `LiteralMap` or `Inputs`: two levels down.
const IN_INPUTS: u32 = agent_proto::check::IN_LITERAL_MAP;

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.literal().fmt(f)
    }
}

impl std::fmt::Debug for Literals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// Equal when the names and the literals (decoded) are, in order: a literal that came encoded
/// equals the same literal built in Rust.
impl PartialEq for Literals {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().zip(other.iter()).all(|(a, b)| a == b)
    }
}

impl Literals {
    /// No literals.
    pub fn new() -> Self {
        Self::default()
    }

    /// The literal called `name`, as it came.
    pub fn get(&self, name: &str) -> Option<&Literal> {
        self.slot(name).map(Slot::literal)
    }

    fn slot(&self, name: &str) -> Option<&Slot> {
        self.0.iter().find(|(n, _)| n.as_str() == name).map(|(_, s)| s)
    }

    /// The value called `name` as a `T`. A missing name is an error unless `T` is an `Option`;
    /// errors are permanent (see [`AgentError`]) and name the value and the expected type.
    pub fn read<T: FromLiteral>(&self, name: &str) -> Result<T, AgentError> {
        self.read_named("value", name)
    }

    pub(crate) fn read_named<T: FromLiteral>(&self, what: &str, name: &str) -> Result<T, AgentError> {
        match self.get(name) {
            Some(literal) => T::from_literal(literal).map_err(|e| e.context(format_args!("{what} `{name}`"))),
            None => T::if_absent().ok_or_else(|| {
                let known: Vec<&str> = self.0.iter().map(|(n, _)| n.as_str()).collect();
                AgentError::permanent(format!("{what} `{name}` is missing (expected {}; there are: {})", T::flyte_type(), known.join(", ")))
            }),
        }
    }

    /// Adds (or replaces) the value called `name`: a [`Literal`] or any Rust value of
    /// [`crate::value`].
    pub fn insert(&mut self, name: impl Into<String>, value: impl IntoLiteral) {
        self.put(name.into(), Slot::Decoded(value.into_literal()));
    }

    /// Adds (or replaces) the literal called `name` from its protobuf encoding (a
    /// `flyteidl.core.Literal`, e.g. one kept from [`TaskRequest::encoded_inputs`]), without
    /// decoding it: it is decoded only if read, and an answer writes these bytes as they are.
    /// Bytes that would not decode are refused (an `InvalidInput` error), and nothing is added.
    ///
    /// ```
    /// use agent_plugin_api::{encode_message, value::IntoLiteral, Literals};
    ///
    /// let mut outputs = Literals::new();
    /// outputs.insert_encoded("n", encode_message(&7i64.into_literal())).unwrap();
    /// assert_eq!(outputs.read::<i64>("n").unwrap(), 7);
    /// assert!(outputs.insert_encoded("bad", vec![0x0a, 0xff]).is_err());
    /// ```
    pub fn insert_encoded(&mut self, name: impl Into<String>, literal: impl Into<Bytes>) -> Result<(), AgentError> {
        let (name, bytes) = (name.into(), literal.into());
        let slot = if decodes(&bytes, STANDALONE) {
            Slot::encoded(bytes)
        } else {
            // Refused by the quick check: prost has the last word (and the error message).
            Slot::Decoded(Literal::decode(bytes).map_err(|e| AgentError::invalid(format!("the literal `{name}` does not decode: {e}")))?)
        };
        self.put(name, slot);
        Ok(())
    }

    fn put(&mut self, name: String, slot: Slot) {
        match self.0.iter_mut().find(|(n, _)| n.as_str() == name) {
            Some(entry) => entry.1 = slot,
            None => self.0.push((Name::Owned(name), slot)),
        }
    }

    /// Builder form of [`Literals::insert`].
    pub fn with(mut self, name: impl Into<String>, value: impl IntoLiteral) -> Self {
        self.insert(name, value);
        self
    }

    /// Names and literals, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Literal)> {
        self.0.iter().map(|(n, s)| (n.as_str(), s.literal()))
    }

    /// Names and slots, in order (for the encoder: encoded literals are written as they came).
    pub(crate) fn slots(&self) -> impl Iterator<Item = (&str, &Slot)> {
        self.0.iter().map(|(n, s)| (n.as_str(), s))
    }

    /// Each literal's protobuf encoding, by name, in order: as it came for one that came
    /// encoded, encoded now for one built in Rust.
    pub(crate) fn encoded(&self) -> Vec<(&str, Bytes)> {
        self.0.iter().map(|(n, s)| (n.as_str(), s.to_bytes())).collect()
    }

    /// Number of literals.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// As Flyte 1's `LiteralMap`.
    pub fn to_literal_map(&self) -> LiteralMap {
        LiteralMap { literals: self.iter().map(|(n, l)| (n.to_string(), l.clone())).collect() }
    }

    /// [`Literals::to_literal_map`] without the copy.
    #[cfg(test)]
    pub(crate) fn into_literal_map(self) -> LiteralMap {
        LiteralMap { literals: self.into_vec().into_iter().collect() }
    }

    #[cfg(test)]
    pub(crate) fn into_vec(self) -> Vec<(String, Literal)> {
        self.0.into_iter().map(|(n, s)| (n.as_str().to_string(), s.into_literal())).collect()
    }

    /// The literals of encoded inputs (a `LiteralMap`, or Flyte 2's `Inputs` when `list`) as
    /// they came, when every one passes the check: `None` when anything is out of the ordinary,
    /// for prost to decode (see [`crate::wire::literal_entries`]).
    fn received(raw: &Bytes, list: bool) -> Option<Self> {
        let entries = crate::wire::literal_entries(raw, list, |literal| decodes(literal, IN_INPUTS))?;
        // A map's entries come sorted with repeats removed; a list may repeat a name.
        let entries = if list { last_of_each_name(entries) } else { entries };
        Some(Self(entries.into_iter().map(|(name, bytes)| (Name::received(raw, name), Slot::encoded(bytes))).collect()))
    }
}

impl From<LiteralMap> for Literals {
    fn from(map: LiteralMap) -> Self {
        Self(map.literals.into_iter().map(|(n, l)| (Name::Owned(n), Slot::Decoded(l))).collect())
    }
}

impl FromIterator<(String, Literal)> for Literals {
    fn from_iter<I: IntoIterator<Item = (String, Literal)>>(iter: I) -> Self {
        let mut out = Self::new();
        for (n, l) in iter {
            out.insert(n, l);
        }
        out
    }
}

/// How a request's inputs are encoded: Flyte 1 sends a `LiteralMap`, Flyte 2 a list of named
/// literals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum InputsWire {
    /// `flyteidl.core.LiteralMap`.
    #[default]
    Map,
    /// `flyteidl2.task.Inputs` (`repeated NamedLiteral literals = 1`).
    List,
}

/// One part of a request (the template, the inputs, the execution metadata): the bytes as
/// they came, decoded the first time the agent reads the part. A part built in Rust (tests,
/// builders) is held decoded from the start. Decoded values are boxed: a request moves into
/// and through the agent's future, and a template and metadata held inline would make every
/// move a copy of 2 KiB.
#[derive(Clone, Default)]
struct Part<T> {
    raw: Bytes,
    decoded: OnceLock<Result<Box<T>, String>>,
}

impl<T: std::fmt::Debug> std::fmt::Debug for Part<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.decoded.get() {
            Some(Ok(v)) => v.fmt(f),
            Some(Err(e)) => write!(f, "<does not decode: {e}>"),
            None => write!(f, "<{} bytes, not read yet>", self.raw.len()),
        }
    }
}

impl<T: Default> Part<T> {
    fn received(raw: Bytes) -> Self {
        Self { raw, decoded: OnceLock::new() }
    }

    fn get(&self, what: &str, decode: impl FnOnce(Bytes) -> Result<T, prost::DecodeError>) -> Result<&T, AgentError> {
        self.decoded
            .get_or_init(|| decode(self.raw.clone()).map(Box::new).map_err(|e| e.to_string()))
            .as_ref()
            .map(|b| &**b)
            .map_err(|e| AgentError::invalid(format!("the task's {what} does not decode: {e}")))
    }

    /// For the builders: the decoded value to change (an undecodable part starts over empty).
    fn make_mut(&mut self, decode: impl FnOnce(Bytes) -> Result<T, prost::DecodeError>) -> &mut T {
        if self.decoded.get().is_none_or(|r| r.is_err()) {
            let value = decode(std::mem::take(&mut self.raw)).unwrap_or_default();
            self.decoded = OnceLock::from(Ok(Box::new(value)));
        }
        self.raw = Bytes::new();
        match self.decoded.get_mut() {
            Some(Ok(v)) => v,
            _ => unreachable!("set just above"),
        }
    }

    fn into_inner(self, what: &str, decode: impl FnOnce(Bytes) -> Result<T, prost::DecodeError>) -> Result<T, AgentError> {
        let result = match self.decoded.into_inner() {
            Some(r) => r.map(|b| *b),
            None => decode(self.raw).map_err(|e| e.to_string()),
        };
        result.map_err(|e| AgentError::invalid(format!("the task's {what} does not decode: {e}")))
    }
}

fn decode_template(raw: Bytes) -> Result<TaskTemplate, prost::DecodeError> {
    TaskTemplate::decode(raw)
}

fn decode_metadata(raw: Bytes) -> Result<TaskExecutionMetadata, prost::DecodeError> {
    TaskExecutionMetadata::decode(raw)
}

/// Decodes a request's inputs: kept encoded when they pass the check (the usual case), decoded
/// by prost otherwise (which then reports what is wrong, or reads what the check left to it).
fn inputs_decoder(wire: InputsWire) -> impl FnOnce(Bytes) -> Result<Literals, prost::DecodeError> {
    move |raw| match Literals::received(&raw, wire == InputsWire::List) {
        Some(literals) => Ok(literals),
        None => decode_inputs(raw, wire),
    }
}

fn decode_inputs(raw: Bytes, wire: InputsWire) -> Result<Literals, prost::DecodeError> {
    match wire {
        InputsWire::Map => LiteralMap::decode(raw).map(Literals::from),
        InputsWire::List => crate::wire::NamedLiterals::decode(raw)
            .map(|list| list.literals.into_iter().map(|l| (l.name, l.value.unwrap_or_default())).collect()),
    }
}

/// A list's entries with a repeated name kept once, at its first place, with its last value
/// (as [`Literals::insert`] keeps them).
fn last_of_each_name(mut entries: Vec<(&str, Bytes)>) -> Vec<(&str, Bytes)> {
    let mut i = 0;
    while i < entries.len() {
        match entries[..i].iter().position(|(n, _)| *n == entries[i].0) {
            Some(first) => {
                let (_, value) = entries.remove(i);
                entries[first].1 = value;
            }
            None => i += 1,
        }
    }
    entries
}

/// The template's task type, read without decoding the rest of the template.
#[derive(Clone, PartialEq, prost::Message)]
struct TemplateType {
    #[prost(string, tag = "2")]
    r#type: String,
}

/// The template's `custom` (field 5, a `Struct`), read without decoding the rest of the
/// template: a slice of `template`, with prost's checks (see [`agent_proto::walk`]). The last
/// `custom` on the wire is the one read; a `Struct` seen twice would merge, which the reader
/// of its bytes leaves to prost (it gives up on a repeated key).
fn template_custom(template: &Bytes) -> Result<Bytes, String> {
    use agent_proto::walk::{each_field, len_field};
    // The first `custom` as a slice; only a second one costs a buffer.
    let (mut first, mut merged, mut seen) = (&[][..], Vec::new(), false);
    each_field(template, |tag, wire_type, buf| {
        if tag != 5 {
            return Ok(false);
        }
        let part = len_field(wire_type, buf)?;
        if !seen {
            (first, seen) = (part, true);
        } else {
            // Merged as protobuf merges a message seen twice: its bytes, one after the other.
            if merged.is_empty() {
                merged.extend_from_slice(first);
            }
            merged.extend_from_slice(part);
        }
        Ok(true)
    })?;
    Ok(if merged.is_empty() { template.slice_ref(first) } else { Bytes::from(merged) })
}

/// A task to run: what FlytePropeller (CreateTask, ExecuteTaskSync) or the Flyte 2 executor
/// (CreateTask) sends, the same for both protocols.
///
/// The SDK hands the agent the request as it came and decodes each part (the template, the
/// inputs, the execution metadata) the first time the agent reads it, so a part the agent never
/// reads costs nothing: a CreateTask is mostly template and metadata that few agents look at.
/// A part that does not decode is an `InvalidInput` error from its accessor (the call fails
/// with `INVALID_ARGUMENT`); pass it on with `?`.
#[derive(Debug, Clone, Default)]
pub struct TaskRequest {
    template: Part<TaskTemplate>,
    inputs: Part<Literals>,
    inputs_wire: InputsWire,
    output_prefix: String,
    metadata: Part<TaskExecutionMetadata>,
    /// The task type read from the raw template, when the template itself was not decoded.
    task_type: OnceLock<String>,
}

impl TaskRequest {
    /// A request for `task_type`, with empty template otherwise (handy in tests).
    pub fn new(task_type: impl Into<String>) -> Self {
        let mut task = Self::default();
        task.template_mut().r#type = task_type.into();
        task
    }

    /// A request from the parts of a received message, each still encoded.
    pub(crate) fn received(template: Bytes, inputs: Bytes, inputs_wire: InputsWire, output_prefix: String, metadata: Bytes) -> Self {
        Self {
            template: Part::received(template),
            inputs: Part::received(inputs),
            inputs_wire,
            output_prefix,
            metadata: Part::received(metadata),
            task_type: OnceLock::new(),
        }
    }

    /// The template's task type (read without decoding the rest of the template).
    pub fn task_type(&self) -> &str {
        match self.template.decoded.get() {
            Some(Ok(t)) => &t.r#type,
            _ => self.task_type.get_or_init(|| TemplateType::decode(self.template.raw.clone()).map(|t| t.r#type).unwrap_or_default()),
        }
    }

    /// The task template: the task type, `custom` (the agent's configuration; read it with
    /// [`TaskRequest::custom`]), the interface, `config`, the security context.
    pub fn template(&self) -> Result<&TaskTemplate, AgentError> {
        self.template.get("template", decode_template)
    }

    /// The template, to change (tests and builders; a template that does not decode starts
    /// over empty).
    pub fn template_mut(&mut self) -> &mut TaskTemplate {
        self.task_type = OnceLock::new();
        self.template.make_mut(decode_template)
    }

    /// The inputs by name.
    pub fn inputs(&self) -> Result<&Literals, AgentError> {
        self.inputs.get("inputs", inputs_decoder(self.inputs_wire))
    }

    /// The inputs, to change (tests and builders).
    pub fn inputs_mut(&mut self) -> &mut Literals {
        self.inputs.make_mut(inputs_decoder(self.inputs_wire))
    }

    /// The inputs, taken (e.g. to answer them as outputs).
    pub fn into_inputs(self) -> Result<Literals, AgentError> {
        self.inputs.into_inner("inputs", inputs_decoder(self.inputs_wire))
    }

    /// Each input's literal as it was encoded on the wire (a protobuf `flyteidl.core.Literal`),
    /// by name, in order, without decoding it: for agents that store or forward inputs as
    /// they are. (Decoded inputs, as after [`TaskRequest::inputs_mut`], are encoded here.)
    pub fn encoded_inputs(&self) -> Result<Vec<(&str, Bytes)>, AgentError> {
        if self.inputs.decoded.get().is_none() {
            // Not read yet: the literals as slices of the request, checked as `inputs()` checks
            // them, without building `Literals` (names borrow the request too).
            let list = self.inputs_wire == InputsWire::List;
            if let Some(entries) = crate::wire::literal_entries(&self.inputs.raw, list, |literal| decodes(literal, IN_INPUTS)) {
                return Ok(if list { last_of_each_name(entries) } else { entries });
            }
        }
        // Read already, or left to prost: from `inputs()` (the bytes as they came for a literal
        // kept encoded).
        Ok(self.inputs()?.encoded())
    }

    /// Where this attempt's outputs belong (`<output_prefix>/outputs.pb` when not inline).
    pub fn output_prefix(&self) -> &str {
        &self.output_prefix
    }

    /// Sets the output prefix (tests and builders).
    pub fn set_output_prefix(&mut self, prefix: impl Into<String>) {
        self.output_prefix = prefix.into();
    }

    /// Execution metadata: the task execution id, namespace, labels, service account…
    pub fn metadata(&self) -> Result<&TaskExecutionMetadata, AgentError> {
        self.metadata.get("execution metadata", decode_metadata)
    }

    /// The metadata, to change (tests and builders).
    pub fn metadata_mut(&mut self) -> &mut TaskExecutionMetadata {
        self.metadata.make_mut(decode_metadata)
    }

    /// Reads `template.custom` (a protobuf `Struct`, as flytekit task classes fill it) into the
    /// agent's own type; an absent `custom` reads as `{}`. Whole numbers read into integer
    /// fields (a `Struct` keeps every number as a double). A `custom` that does not fit is a
    /// permanent error: the task is wrong, no retry will fix it. Only `custom` is decoded, not
    /// the rest of the template.
    ///
    /// ```
    /// # use agent_plugin_api::TaskRequest;
    /// #[derive(serde::Deserialize)]
    /// struct Custom {
    ///     url: String,
    ///     #[serde(default)]
    ///     timeout_sec: u64,
    /// }
    ///
    /// let task = TaskRequest::new("webhook").with_custom(serde_json::json!({"url": "http://x", "timeout_sec": 10}));
    /// let custom: Custom = task.custom().unwrap();
    /// assert_eq!((custom.url.as_str(), custom.timeout_sec), ("http://x", 10));
    /// ```
    pub fn custom<T: DeserializeOwned>(&self) -> Result<T, AgentError> {
        let struct_value = match self.template.decoded.get() {
            Some(Ok(t)) => t.custom.clone(),
            // Not decoded (or not decodable as a whole): read `custom` alone.
            _ => {
                let custom = template_custom(&self.template.raw)
                    .map_err(|e| AgentError::invalid(format!("the task's template does not decode: {e}")))?;
                // Straight from the wire into `T`; anything that reader leaves (see
                // `crate::custom`) goes the way below, whose answers are the reference.
                if let Ok(value) = crate::custom::from_struct_bytes::<T>(&custom) {
                    return Ok(value);
                }
                match custom.is_empty() {
                    true => None,
                    false => Some(
                        prost_types::Struct::decode(custom)
                            .map_err(|e| AgentError::invalid(format!("the task's template `custom` does not decode: {e}")))?,
                    ),
                }
            }
        };
        let value = struct_value.as_ref().map(json::struct_to_json).unwrap_or(serde_json::Value::Object(Default::default()));
        serde_json::from_value(value).map_err(|e| AgentError::permanent(format!("task template `custom` does not fit: {e}")))
    }

    /// The input called `name` as a `T` (see [`crate::value`] for the types). A missing input
    /// is an error unless `T` is an `Option`; a missing or mistyped input is a permanent error
    /// naming the input, the expected type and what was found.
    ///
    /// ```
    /// # use agent_plugin_api::TaskRequest;
    /// let task = TaskRequest::new("t").with_input("n", 3).with_input("tags", vec!["a", "b"]);
    /// assert_eq!(task.input::<i64>("n").unwrap(), 3);
    /// assert_eq!(task.input::<Vec<String>>("tags").unwrap(), ["a", "b"]);
    /// assert_eq!(task.input::<Option<f64>>("ratio").unwrap(), None);
    /// assert_eq!(task.input::<String>("n").unwrap_err().message(), "input `n`: expected string, found integer");
    /// ```
    pub fn input<T: FromLiteral>(&self, name: &str) -> Result<T, AgentError> {
        self.inputs()?.read_named("input", name)
    }

    /// The task execution id (see [`TaskRequest::idempotency_key`]).
    pub fn task_execution_id(&self) -> Result<Option<&TaskExecutionIdentifier>, AgentError> {
        Ok(self.metadata()?.task_execution_id.as_ref())
    }

    /// A text key naming this attempt of this task in this execution:
    /// `project/domain/execution/node/task/attempt`. Propeller may send CreateTask more than once
    /// for one attempt (same key): make `create` idempotent on it, e.g. by passing it to the
    /// external system as a request or job id. A retry is a new attempt with a new key. `None`
    /// when the caller sent no task execution id.
    pub fn idempotency_key(&self) -> Result<Option<String>, AgentError> {
        let Some(id) = self.task_execution_id()? else { return Ok(None) };
        let node = id.node_execution_id.as_ref();
        let execution = node.and_then(|n| n.execution_id.as_ref());
        let task = id.task_id.as_ref();
        Ok(Some(format!(
            "{}/{}/{}/{}/{}/{}",
            execution.map(|e| e.project.as_str()).unwrap_or_default(),
            execution.map(|e| e.domain.as_str()).unwrap_or_default(),
            execution.map(|e| e.name.as_str()).unwrap_or_default(),
            node.map(|n| n.node_id.as_str()).unwrap_or_default(),
            task.map(|t| t.name.as_str()).unwrap_or_default(),
            id.retry_attempt
        )))
    }

    /// Builder: sets `template.custom` from JSON.
    pub fn with_custom(mut self, custom: serde_json::Value) -> Self {
        self.template_mut().custom = Some(json::json_to_struct(&custom));
        self
    }

    /// Builder: adds an input (a [`Literal`] or any Rust value of [`crate::value`]).
    pub fn with_input(mut self, name: impl Into<String>, value: impl IntoLiteral) -> Self {
        self.inputs_mut().insert(name, value);
        self
    }

    /// Builder: sets the output prefix.
    pub fn with_output_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.output_prefix = prefix.into();
        self
    }
}

/// The state of a task as an agent reports it (`GetTask`, and the answer of a sync agent).
///
/// ```
/// use agent_plugin_api::{Phase, Resource};
///
/// let running = Resource::running().with_log_link("console", "https://jobs.example.com/42").with_info("job_id", "42");
/// assert!(!running.is_terminal());
/// let done = Resource::succeeded(Default::default()).with_output("rows", 1200).with_message("query done");
/// assert_eq!(done.phase, Phase::Succeeded);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    /// Where the task is. Terminal: `Succeeded`, `Failed`, `RetryableFailed`, `Aborted`.
    pub phase: Phase,
    /// A human-readable message (shown as the reason in Flyte's UI). A `Cow`, so that a fixed
    /// message (`"job submitted"`) costs no allocation; a formatted one is a `String` as before.
    pub message: Cow<'static, str>,
    /// Inline outputs. Without them propeller reads `<output_prefix>/outputs.pb`, which the
    /// agent must then have written. Keep a response under 4 MiB: propeller's client refuses more.
    pub outputs: Option<Literals>,
    /// Links to the job's logs or console; return them with the first `Running` report.
    pub log_links: Vec<TaskLog>,
    /// Free-form information shown with the task. Keys are `Cow`s, so that the usual fixed
    /// names (`"job_id"`) cost no allocation; build it with [`Resource::with_info`].
    pub custom_info: BTreeMap<Cow<'static, str>, serde_json::Value>,
}

impl Resource {
    /// A resource in `phase` with nothing else set.
    pub fn new(phase: Phase) -> Self {
        Self { phase, message: Cow::Borrowed(""), outputs: None, log_links: Vec::new(), custom_info: BTreeMap::new() }
    }

    /// Still running.
    pub fn running() -> Self {
        Self::new(Phase::Running)
    }

    /// Done, with these outputs inline. For outputs too large to answer inline (a response
    /// must stay under 4 MiB), write them as a `LiteralMap` to `<output_prefix>/outputs.pb` and
    /// answer `Resource::new(Phase::Succeeded)`: without inline outputs propeller reads that file.
    pub fn succeeded(outputs: Literals) -> Self {
        Self { outputs: Some(outputs), ..Self::new(Phase::Succeeded) }
    }

    /// Failed for good: Flyte does not retry the attempt.
    pub fn failed(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(Phase::Failed).with_message(message)
    }

    /// Failed, and worth another attempt (counts against the task's retries).
    pub fn retryable_failure(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(Phase::RetryableFailed).with_message(message)
    }

    /// Sets the message: a `&'static str` (kept as it is) or a `String`.
    pub fn with_message(mut self, message: impl Into<Cow<'static, str>>) -> Self {
        self.message = message.into();
        self
    }

    /// Adds an inline output (a [`Literal`] or any Rust value of [`crate::value`]).
    pub fn with_output(mut self, name: impl Into<String>, value: impl IntoLiteral) -> Self {
        self.outputs.get_or_insert_with(Literals::new).insert(name, value);
        self
    }

    /// Adds a log link.
    pub fn with_log_link(mut self, name: impl Into<String>, uri: impl Into<String>) -> Self {
        self.log_links.push(TaskLog { name: name.into(), uri: uri.into(), ..Default::default() });
        self
    }

    /// Adds an entry to `custom_info`, under a key that is a `&'static str` (kept as it is) or a
    /// `String`.
    pub fn with_info(mut self, key: impl Into<Cow<'static, str>>, value: impl Into<serde_json::Value>) -> Self {
        self.custom_info.insert(key.into(), value.into());
        self
    }

    /// Whether the phase ends the task.
    pub fn is_terminal(&self) -> bool {
        matches!(self.phase, Phase::Succeeded | Phase::Failed | Phase::RetryableFailed | Phase::Aborted)
    }
}

/// What `GetTaskMetrics` asks for.
#[derive(Debug, Clone, Default)]
pub struct MetricsQuery {
    /// The metric queries, as the caller wrote them.
    pub queries: Vec<String>,
    /// Start of the window.
    pub start_time: Option<prost_types::Timestamp>,
    /// End of the window.
    pub end_time: Option<prost_types::Timestamp>,
    /// Resolution.
    pub step: Option<prost_types::Duration>,
}

/// What `GetTaskLogs` asks for.
#[derive(Debug, Clone, Default)]
pub struct LogsQuery {
    /// How many lines the caller wants (0: the agent's choice).
    pub lines: u64,
    /// Where to continue from, as returned earlier.
    pub token: String,
}

/// A stream of log lines answering `GetTaskLogs`.
///
/// Build it from lines at hand ([`LogStream::from_lines`]) or feed it from a task
/// ([`LogStream::channel`]); each batch becomes one response message after a header carrying
/// the continuation token.
#[derive(Debug)]
pub struct LogStream {
    pub(crate) token: String,
    pub(crate) rx: tokio::sync::mpsc::Receiver<Result<Vec<LogLine>, AgentError>>,
}

impl LogStream {
    /// A stream of one batch.
    pub fn from_lines(lines: Vec<LogLine>) -> Self {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.try_send(Ok(lines)).expect("a new channel has room for one batch");
        Self { token: String::new(), rx }
    }

    /// A stream fed through the returned sender; it ends when the sender is dropped.
    pub fn channel(buffer: usize) -> (tokio::sync::mpsc::Sender<Result<Vec<LogLine>, AgentError>>, Self) {
        let (tx, rx) = tokio::sync::mpsc::channel(buffer.max(1));
        (tx, Self { token: String::new(), rx })
    }

    /// Sets the continuation token sent in the header.
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = token.into();
        self
    }
}

/// A log line, from text.
pub fn log_line(message: impl Into<String>) -> LogLine {
    LogLine { message: message.into(), ..Default::default() }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_fixed_message_and_fixed_info_keys_are_kept_without_a_copy() {
        let r = Resource::running().with_message("job submitted").with_info("job_id", "42");
        assert!(matches!(r.message, Cow::Borrowed("job submitted")));
        assert!(r.custom_info.keys().all(|k| matches!(k, Cow::Borrowed(_))));
        // A formatted one is a `String`, as before; both read as `str`.
        let r = Resource::failed(format!("job {} failed", 42)).with_info(format!("k{}", 1), 1);
        assert!(matches!(r.message, Cow::Owned(_)));
        assert_eq!(r.message, "job 42 failed");
        assert_eq!(r.custom_info["k1"], 1);
    }
    use super::*;
    use crate::ErrorKind;

    fn literal(n: i64) -> Literal {
        n.into_literal()
    }

    fn template_bytes() -> Bytes {
        let t = TaskTemplate {
            r#type: "echo".into(),
            custom: Some(json::json_to_struct(&serde_json::json!({"n": 3, "name": "x"}))),
            ..Default::default()
        };
        t.encode_to_vec().into()
    }

    fn map_bytes(entries: &[(&str, i64)]) -> Bytes {
        // Entries written one by one, in the order given (a map's own encoding would sort them).
        let mut out = Vec::new();
        for (name, n) in entries {
            let one = LiteralMap { literals: [(name.to_string(), literal(*n))].into() };
            out.extend(one.encode_to_vec());
        }
        out.into()
    }

    #[test]
    fn parts_decode_when_read_and_a_bad_part_fails_only_its_reader() {
        let bad = Bytes::from_static(b"\x0a\xff\xff");
        let task = TaskRequest::received(template_bytes(), map_bytes(&[("a", 1)]), InputsWire::Map, "s3://out".into(), bad.clone());
        assert_eq!(task.task_type(), "echo");
        assert_eq!(task.output_prefix(), "s3://out");
        assert_eq!(task.input::<i64>("a").unwrap(), 1);
        #[derive(serde::Deserialize)]
        struct Custom {
            n: u32,
            name: String,
        }
        let custom: Custom = task.custom().unwrap();
        assert_eq!((custom.n, custom.name.as_str()), (3, "x"));
        let e = task.metadata().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
        assert!(e.message().contains("execution metadata does not decode"), "{e}");
        assert_eq!(task.idempotency_key().unwrap_err().kind(), ErrorKind::InvalidInput);

        let task = TaskRequest::received(bad.clone(), Bytes::new(), InputsWire::Map, String::new(), Bytes::new());
        assert_eq!(task.template().unwrap_err().kind(), ErrorKind::InvalidInput);
        assert_eq!(task.custom::<serde_json::Value>().unwrap_err().kind(), ErrorKind::InvalidInput);
        assert!(task.inputs().unwrap().is_empty(), "absent inputs are empty");
    }

    #[test]
    fn custom_is_read_without_the_rest_of_the_template() {
        // Field 3 (`metadata`) holds bytes that are no TaskMetadata: the template does not
        // decode, but `custom` (field 5) still reads.
        let mut raw = template_bytes().to_vec();
        raw.extend([0x1a, 0x02, 0xff, 0xff]);
        let task = TaskRequest::received(raw.into(), Bytes::new(), InputsWire::Map, String::new(), Bytes::new());
        assert!(task.template().is_err());
        assert_eq!(task.custom::<serde_json::Value>().unwrap(), serde_json::json!({"n": 3, "name": "x"}));
        // A custom that does not fit is the task's fault (permanent), as before.
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Wrong {
            n: String,
        }
        assert_eq!(task.custom::<Wrong>().unwrap_err().kind(), ErrorKind::Permanent);
    }

    #[test]
    fn custom_sent_twice_merges_as_the_decoded_template_does() {
        let part = |v: serde_json::Value| TaskTemplate { custom: Some(json::json_to_struct(&v)), ..Default::default() }.encode_to_vec();
        // Two `custom` fields (a template merged from two): their keys merge, the later wins.
        let raw = Bytes::from([part(serde_json::json!({"a": 1, "b": 1})), part(serde_json::json!({"b": 2, "c": 3}))].concat());
        let merged = serde_json::json!({"a": 1, "b": 2, "c": 3});
        let lazy = TaskRequest::received(raw.clone(), Bytes::new(), InputsWire::Map, String::new(), Bytes::new());
        assert_eq!(lazy.custom::<serde_json::Value>().unwrap(), merged);
        let decoded = TaskRequest::received(raw, Bytes::new(), InputsWire::Map, String::new(), Bytes::new());
        decoded.template().unwrap();
        assert_eq!(decoded.custom::<serde_json::Value>().unwrap(), merged, "read from the decoded template");
        // A `custom` of the wrong wire type is refused, as prost refuses it.
        let wrong = TaskRequest::received(Bytes::from_static(b"\x28\x01"), Bytes::new(), InputsWire::Map, String::new(), Bytes::new());
        assert_eq!(wrong.custom::<serde_json::Value>().unwrap_err().kind(), ErrorKind::InvalidInput);
        assert!(wrong.template().is_err());
    }

    #[test]
    fn encoded_inputs_are_the_literals_as_sent() {
        // Flyte 1: a map, read sorted by name; a name sent twice keeps its last value.
        let raw = map_bytes(&[("b", 2), ("a", 1), ("b", 3)]);
        let task = TaskRequest::received(Bytes::new(), raw.clone(), InputsWire::Map, String::new(), Bytes::new());
        let encoded = task.encoded_inputs().unwrap();
        let names: Vec<&str> = encoded.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(encoded[1].1, literal(3).encode_to_vec());
        let decoded = task.inputs().unwrap();
        assert_eq!(decoded.get("b"), Some(&literal(3)));
        for (name, bytes) in &encoded {
            assert_eq!(decoded.get(name).unwrap(), &Literal::decode(bytes.clone()).unwrap());
        }
        // Flyte 2: a list, kept in order; a name sent twice keeps its first place and its last
        // value, whether the inputs are read or handed out encoded.
        let list = crate::wire::NamedLiterals {
            literals: [("z", 7), ("y", 8), ("z", 9)]
                .map(|(n, v)| crate::wire::NamedLiteral { name: n.into(), value: Some(literal(v)) })
                .to_vec(),
        };
        let task = TaskRequest::received(Bytes::new(), list.encode_to_vec().into(), InputsWire::List, String::new(), Bytes::new());
        let expected = [("z", literal(9)), ("y", literal(8))];
        let encoded: Vec<(&str, Literal)> =
            task.encoded_inputs().unwrap().into_iter().map(|(n, b)| (n, Literal::decode(b).unwrap())).collect();
        assert_eq!(encoded, expected);
        let read: Vec<(String, Literal)> = task.into_inputs().unwrap().iter().map(|(n, l)| (n.to_string(), l.clone())).collect();
        assert_eq!(read, expected.map(|(n, l)| (n.to_string(), l)));
        // Built in Rust: encoded from the values.
        let built = TaskRequest::new("t").with_input("k", 5);
        assert_eq!(built.encoded_inputs().unwrap(), [("k", Bytes::from(literal(5).encode_to_vec()))]);
    }

    /// A literal's encoding with an unknown field (number 99, a varint) after it: one a newer
    /// Flyte might send. Decoding drops the field; a literal kept encoded keeps it.
    fn with_unknown_field(literal: &Literal) -> Vec<u8> {
        let mut bytes = literal.encode_to_vec();
        bytes.extend([0x98, 0x06, 0x2a]);
        bytes
    }

    fn map_of(entries: &[(&str, &[u8])]) -> Bytes {
        let mut out = Vec::new();
        for (name, literal) in entries {
            let mut entry = vec![0x0a, name.len() as u8];
            entry.extend(name.as_bytes());
            entry.extend([0x12, literal.len() as u8]);
            entry.extend(*literal);
            out.extend([0x0a, entry.len() as u8]);
            out.extend(entry);
        }
        out.into()
    }

    #[test]
    fn received_inputs_are_answered_as_they_came() {
        let odd = with_unknown_field(&literal(7));
        let raw = map_of(&[("b", &odd), ("a", &literal(1).encode_to_vec())]);
        let task = TaskRequest::received(Bytes::new(), raw.clone(), InputsWire::Map, String::new(), Bytes::new());
        // Read as prost reads them (the unknown field dropped) ...
        let inputs = task.inputs().unwrap();
        assert_eq!(*inputs, Literals::from(LiteralMap::decode(raw).unwrap()));
        assert_eq!(task.input::<i64>("b").unwrap(), 7);
        assert_eq!(task.encoded_inputs().unwrap()[1], ("b", Bytes::from(odd.clone())));
        // ... and answered as they came: the unknown field is still there, in both protocols.
        let answer = Resource::succeeded(task.into_inputs().unwrap());
        for protocol in [Protocol::V1, Protocol::V2] {
            let bytes = crate::encode::get_response(&answer, protocol);
            assert!(bytes.windows(odd.len()).any(|w| w == odd), "{protocol:?}: the literal's bytes as received");
        }
        let v1 = crate::flyte::admin::GetTaskResponse::decode(&crate::encode::get_response(&answer, Protocol::V1)[..]).unwrap();
        assert_eq!(Literals::from(v1.resource.unwrap().outputs.unwrap()), answer.outputs.unwrap());
    }

    #[test]
    fn inputs_read_as_prost_decodes_them_whatever_the_bytes() {
        // The usual inputs, inputs the quick path leaves to prost (a literal sent twice in one
        // entry merges; a group), and damaged copies of them: `inputs()` reads what prost's
        // decode of the whole message reads, and fails where it fails, in both protocols.
        let one = literal(1).encode_to_vec();
        let text = "ünï".into_literal().encode_to_vec();
        let list = vec![1i64, 2].into_literal().encode_to_vec();
        let merged = [&one[..], &with_unknown_field(&literal(2))].concat();
        let mut samples = vec![
            map_of(&[("a", &one), ("t", &text), ("l", &list)]),
            map_of(&[("z", &with_unknown_field(&literal(3))), ("a", &one), ("z", &text)]),
            map_of(&[("", &[]), ("e", &[])]),
            map_of(&[("r", &one), ("s", &text), ("r", &list)]),
        ];
        // An entry with its literal twice; a group among the map's fields.
        let mut twice = map_of(&[("m", &one)]).to_vec();
        twice[1] += 2 + text.len() as u8;
        twice.extend([0x12, text.len() as u8]);
        twice.extend(&text);
        samples.push(twice.into());
        samples.push([&map_of(&[("g", &merged)])[..], &[0x1b, 0x08, 0x01, 0x1c]].concat().into());
        let mut next = crate::mutate::generator(0x9e37_79b9_7f4a_7c15);
        let (mut read, mut refused, mut kept) = (0, 0, 0);
        for sample in samples.clone() {
            for n in 0..800 {
                let body = if n == 0 { sample.to_vec() } else { crate::mutate::mutated(&sample, &mut next) };
                let raw = Bytes::from(body);
                for wire in [InputsWire::Map, InputsWire::List] {
                    let task = TaskRequest::received(Bytes::new(), raw.clone(), wire, String::new(), Bytes::new());
                    // Encoded before the inputs are read (without building them) ...
                    let early = task.encoded_inputs().map_err(|e| e.kind());
                    let ours = task.inputs().map_err(|e| e.kind());
                    let prost = decode_inputs(raw.clone(), wire).map_err(|_| ErrorKind::InvalidInput);
                    assert_eq!(ours, prost.as_ref().map_err(|k| *k), "{wire:?} inputs {raw:02x?}");
                    // ... and after: the same names, and bytes that decode to what was read.
                    assert_eq!(early.is_ok(), prost.is_ok(), "{wire:?} encoded inputs {raw:02x?}");
                    if let (Ok(early), Ok(literals)) = (&early, &ours) {
                        assert_eq!(early.iter().map(|(n, _)| *n).collect::<Vec<_>>(), literals.iter().map(|(n, _)| n).collect::<Vec<_>>());
                        for ((_, bytes), (_, literal)) in early.iter().zip(literals.iter()) {
                            assert_eq!(&Literal::decode(bytes.clone()).unwrap(), literal);
                        }
                    }
                    assert_eq!(task.encoded_inputs().is_ok(), prost.is_ok());
                    match ours {
                        Ok(literals) => {
                            read += 1;
                            kept += usize::from(literals.slots().all(|(_, s)| matches!(s, Slot::Encoded { .. })));
                        }
                        Err(_) => refused += 1,
                    }
                }
            }
        }
        assert!(read > 1000 && refused > 1000, "both outcomes are exercised ({read} read, {refused} refused)");
        assert!(kept > read / 2, "most readable inputs stay encoded ({kept} of {read})");
    }

    #[test]
    fn inserting_an_encoded_literal_checks_it() {
        let mut outputs = Literals::new();
        outputs.insert_encoded("n", with_unknown_field(&literal(5))).unwrap();
        outputs.insert_encoded("empty", Vec::new()).unwrap();
        assert_eq!(outputs, Literals::new().with("n", 5).with("empty", Literal::default()), "equal to the same literals built in Rust");
        // Not a literal: refused, with prost's reason, and nothing is added.
        let e = outputs.insert_encoded("bad", vec![0x0a, 0x05, 0x01]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(e.message().contains("`bad` does not decode"), "{e}");
        assert_eq!(outputs.len(), 2);
        // A string that is not UTF-8, three levels down, is found without decoding.
        let mut deep = "abc".into_literal().encode_to_vec();
        let at = deep.iter().position(|&b| b == b'a').unwrap();
        deep[at] = 0xff;
        assert!(Literal::decode(&deep[..]).is_err());
        assert!(outputs.insert_encoded("deep", deep).is_err());
        // Replacing by name keeps the place, as `insert` does.
        outputs.insert_encoded("n", literal(6).encode_to_vec()).unwrap();
        assert_eq!(outputs.iter().map(|(n, _)| n).collect::<Vec<_>>(), ["n", "empty"]);
        assert_eq!(outputs.read::<i64>("n").unwrap(), 6);
    }

    #[test]
    fn builders_change_a_received_request() {
        let task = TaskRequest::received(template_bytes(), map_bytes(&[("a", 1)]), InputsWire::Map, String::new(), Bytes::new())
            .with_input("b", 2)
            .with_custom(serde_json::json!({"n": 4}));
        assert_eq!(task.task_type(), "echo", "the rest of the template is kept");
        assert_eq!(task.input::<i64>("a").unwrap() + task.input::<i64>("b").unwrap(), 3);
        assert_eq!(task.custom::<serde_json::Value>().unwrap(), serde_json::json!({"n": 4}));
        let mut task = task;
        task.metadata_mut().namespace = "ns".into();
        assert_eq!(task.metadata().unwrap().namespace, "ns");
    }
}
