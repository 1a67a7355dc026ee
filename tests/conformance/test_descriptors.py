"""The project's own .proto files must declare the Flyte wire contract exactly as upstream does.

agent-host compiles its own copies of the Flyte IDL (under proto/). Names, numbers, types and
labels are the wire contract, so every message, field, enum value, service and method that the
project declares in the `flyteidl.*` and `flyteidl2.*` packages is compared here with the
descriptors shipped in the PyPI packages flyteidl==1.16.8 and flyteidl2==2.0.53.

Both sides are compared as FileDescriptorProto messages: ours come from compiling proto/ with
grpcio-tools' bundled protoc, upstream's are the serialized files in the packages' descriptor pool.
"""

import copy
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from google.protobuf import descriptor as _d
from google.protobuf import descriptor_pb2

REPO_ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = REPO_ROOT / "proto"

CHECKED_PACKAGES = ("flyteidl", "flyteidl2")
OWN_PACKAGE = "agenthost.plugin.v1"
OWN_PROTO = "agenthost/plugin/v1/plugin.proto"

FDP = descriptor_pb2.FieldDescriptorProto


# --------------------------------------------------------------------------------------------
# Loading both sides
# --------------------------------------------------------------------------------------------

def project_proto_files(root=PROTO_ROOT):
    """All .proto files under proto/, as import paths relative to it."""
    found = []
    for dirpath, _, names in os.walk(root):
        for name in names:
            if name.endswith(".proto"):
                found.append(Path(dirpath, name).relative_to(root).as_posix())
    return sorted(found)


def compile_protos(root=PROTO_ROOT):
    """Compile every .proto under root with grpcio-tools' protoc into a FileDescriptorSet."""
    import grpc_tools
    from grpc_tools import protoc

    wkt_include = Path(grpc_tools.__file__).parent / "_proto"
    files = project_proto_files(root)
    assert files, "no .proto files under %s" % root
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp, "set.pb")
        args = ["protoc", "-I%s" % root, "-I%s" % wkt_include, "--include_imports",
                "--descriptor_set_out=%s" % out] + files
        rc = protoc.main(args)
        assert rc == 0, ("protoc failed (exit %d) compiling %s (its messages are in the "
                         "captured stderr)" % (rc, root))
        return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


def upstream_pool():
    """The descriptor pool holding the published flyteidl and flyteidl2 files."""
    from flyteidl.service import agent_pb2
    from flyteidl2.connector import service_pb2

    assert agent_pb2.DESCRIPTOR.pool is service_pb2.DESCRIPTOR.pool
    return agent_pb2.DESCRIPTOR.pool


def upstream_agent_services(pool):
    """Upstream service descriptors of the agent (v1) and connector (v2) protocols."""
    files = [pool.FindFileByName("flyteidl/service/agent.proto"),
             pool.FindFileByName("flyteidl2/connector/service.proto")]
    return [s for f in files for s in f.services_by_name.values()]


# --------------------------------------------------------------------------------------------
# An index of declarations by full name, built from FileDescriptorProtos
# --------------------------------------------------------------------------------------------

@dataclass
class Index:
    messages: dict = field(default_factory=dict)   # full name -> (DescriptorProto, file)
    enums: dict = field(default_factory=dict)      # full name -> (EnumDescriptorProto, file)
    services: dict = field(default_factory=dict)   # full name -> (ServiceDescriptorProto, file)

    def add_file(self, fproto):
        prefix = fproto.package + "." if fproto.package else ""
        for msg in fproto.message_type:
            self._add_message(prefix + msg.name, msg, fproto)
        for enum in fproto.enum_type:
            self.enums[prefix + enum.name] = (enum, fproto)
        for svc in fproto.service:
            self.services[prefix + svc.name] = (svc, fproto)

    def _add_message(self, full_name, msg, fproto):
        self.messages[full_name] = (msg, fproto)
        for nested in msg.nested_type:
            self._add_message(full_name + "." + nested.name, nested, fproto)
        for enum in msg.enum_type:
            self.enums[full_name + "." + enum.name] = (enum, fproto)


def in_checked_package(full_name):
    return full_name.split(".", 1)[0] in CHECKED_PACKAGES


def index_project(fds):
    """Index of everything the project declares in the checked packages."""
    index = Index()
    for fproto in fds.file:
        if fproto.package.split(".", 1)[0] in CHECKED_PACKAGES:
            index.add_file(fproto)
    return index


class UpstreamIndex:
    """Lazily indexes the upstream files that contain the symbols asked for."""

    def __init__(self, pool):
        self.pool = pool
        self.index = Index()
        self._files_seen = set()

    def _load(self, full_name):
        try:
            fdesc = self.pool.FindFileContainingSymbol(full_name)
        except KeyError:
            return
        if fdesc.name not in self._files_seen:
            self._files_seen.add(fdesc.name)
            self.index.add_file(descriptor_pb2.FileDescriptorProto.FromString(fdesc.serialized_pb))

    def message(self, full_name):
        self._load(full_name)
        return self.index.messages.get(full_name)

    def enum(self, full_name):
        self._load(full_name)
        return self.index.enums.get(full_name)

    def service(self, full_name):
        self._load(full_name)
        return self.index.services.get(full_name)


# --------------------------------------------------------------------------------------------
# Comparison
# --------------------------------------------------------------------------------------------

def type_label(fproto_field):
    return FDP.Type.Name(fproto_field.type)[len("TYPE_"):].lower()


def is_repeated(f):
    return f.label == FDP.LABEL_REPEATED


def real_oneof(msg, f):
    """Name of the (non-synthetic) oneof the field belongs to, else None."""
    if f.HasField("oneof_index") and not f.proto3_optional:
        return msg.oneof_decl[f.oneof_index].name
    return None


def map_entry_of(f, lookup):
    """For a map field, its entry message (DescriptorProto); else None."""
    if f.type != FDP.TYPE_MESSAGE:
        return None
    found = lookup(f.type_name.lstrip("."))
    if found is not None and found[0].options.map_entry:
        return found[0]
    return None


def describe_map(entry):
    key, value = sorted(entry.field, key=lambda x: x.number)
    return "map<%s,%s>" % (value_type_text(key), value_type_text(value))


def value_type_text(f):
    return f.type_name.lstrip(".") if f.type_name else type_label(f)


def compare_field(where, ours, theirs, our_msg, their_msg, our_lookup, their_lookup):
    out = []

    def differ(what, mine, upstream):
        if mine != upstream:
            out.append("%s: %s is %r, upstream has %r" % (where, what, mine, upstream))

    differ("number", ours.number, theirs.number)
    differ("type", type_label(ours), type_label(theirs))
    differ("repeated", is_repeated(ours), is_repeated(theirs))
    differ("proto3 optional", ours.proto3_optional, theirs.proto3_optional)
    named_types = (FDP.TYPE_MESSAGE, FDP.TYPE_ENUM)
    if ours.type in named_types or theirs.type in named_types:
        differ("type_name", ours.type_name, theirs.type_name)
    our_map = map_entry_of(ours, our_lookup)
    their_map = map_entry_of(theirs, their_lookup)
    differ("map", describe_map(our_map) if our_map else None,
           describe_map(their_map) if their_map else None)
    differ("oneof", real_oneof(our_msg, ours), real_oneof(their_msg, theirs))
    our_packed = ours.options.packed if ours.options.HasField("packed") else None
    their_packed = theirs.options.packed if theirs.options.HasField("packed") else None
    differ("packed option", our_packed, their_packed)
    return out


def compare_message(name, ours, our_file, theirs, their_file, our_lookup, their_lookup,
                    require_all_fields):
    out = []
    if our_file.syntax != their_file.syntax:
        out.append("%s: declared in a %r file, upstream in a %r file"
                   % (name, our_file.syntax or "proto2", their_file.syntax or "proto2"))
    if ours.options.map_entry != theirs.options.map_entry:
        out.append("%s: map_entry is %s, upstream %s"
                   % (name, ours.options.map_entry, theirs.options.map_entry))
    their_by_name = {f.name: f for f in theirs.field}
    their_by_number = {f.number: f for f in theirs.field}
    our_names = set()
    for f in ours.field:
        our_names.add(f.name)
        where = "%s.%s (#%d)" % (name, f.name, f.number)
        upstream = their_by_name.get(f.name)
        if upstream is None:
            clash = their_by_number.get(f.number)
            hint = (", upstream #%d is %r" % (f.number, clash.name)) if clash else ""
            out.append("%s: field not in upstream%s" % (where, hint))
            continue
        out += compare_field(where, f, upstream, ours, theirs, our_lookup, their_lookup)
    for f in theirs.field:
        if require_all_fields and f.name not in our_names:
            out.append("%s.%s (#%d): upstream field not declared by the project"
                       % (name, f.name, f.number))
    return out


def compare_enum(name, ours, theirs):
    out = []
    their_values = {v.name: v.number for v in theirs.value}
    our_values = {v.name: v.number for v in ours.value}
    for vname, number in our_values.items():
        if vname not in their_values:
            out.append("%s.%s = %d: enum value not in upstream" % (name, vname, number))
        elif their_values[vname] != number:
            out.append("%s.%s: number is %d, upstream has %d"
                       % (name, vname, number, their_values[vname]))
    for vname, number in their_values.items():
        if vname not in our_values:
            out.append("%s.%s = %d: upstream enum value not declared by the project"
                       % (name, vname, number))
    return out


def compare_service(name, ours, theirs):
    out = []
    their_methods = {m.name: m for m in theirs.method}
    our_methods = {m.name: m for m in ours.method}
    for mname, m in our_methods.items():
        where = "%s/%s" % (name, mname)
        up = their_methods.get(mname)
        if up is None:
            out.append("%s: method not in upstream" % where)
            continue
        for attr in ("input_type", "output_type", "client_streaming", "server_streaming"):
            if getattr(m, attr) != getattr(up, attr):
                out.append("%s: %s is %r, upstream has %r"
                           % (where, attr, getattr(m, attr), getattr(up, attr)))
    for mname in their_methods:
        if mname not in our_methods:
            out.append("%s/%s: upstream method not declared by the project" % (name, mname))
    return out


def compare_with_upstream(fds, pool):
    """Every mismatch between the project's declarations in fds and upstream, as sentences.

    Every declared field and enum value must match upstream. A declared message must also have
    all of upstream's fields when it is on the wire, i.e. reachable from an agent/connector RPC;
    outside that closure a message may be declared only as the namespace of a nested type
    (e.g. flyteidl.core.ExecutionError for its ErrorKind enum).
    """
    ours = index_project(fds)
    upstream = UpstreamIndex(pool)
    on_the_wire, _ = agent_rpc_closure(pool)
    out = []
    for name, (msg, fproto) in sorted(ours.messages.items()):
        found = upstream.message(name)
        if found is None:
            out.append("%s: message not in upstream (declared in %s)" % (name, fproto.name))
            continue
        out += compare_message(name, msg, fproto, found[0], found[1],
                               ours.messages.get, upstream.message,
                               require_all_fields=name in on_the_wire)
    for name, (enum, fproto) in sorted(ours.enums.items()):
        found = upstream.enum(name)
        if found is None:
            out.append("%s: enum not in upstream (declared in %s)" % (name, fproto.name))
            continue
        out += compare_enum(name, enum, found[0])
    for name, (svc, fproto) in sorted(ours.services.items()):
        found = upstream.service(name)
        if found is None:
            out.append("%s: service not in upstream (declared in %s)" % (name, fproto.name))
            continue
        out += compare_service(name, svc, found[0])
    return out


def upstream_closure(roots):
    """Message and enum descriptors reachable from roots through fields (upstream pool)."""
    messages, enums = {}, {}
    stack = list(roots)
    while stack:
        msg = stack.pop()
        if msg.full_name in messages:
            continue
        messages[msg.full_name] = msg
        for f in msg.fields:
            if f.type == _d.FieldDescriptor.TYPE_MESSAGE:
                stack.append(f.message_type)
            elif f.type == _d.FieldDescriptor.TYPE_ENUM:
                enums[f.enum_type.full_name] = f.enum_type
    return messages, enums


def agent_rpc_closure(pool):
    """Upstream messages and enums reachable from the agent (v1) and connector (v2) RPCs."""
    roots = [t for s in upstream_agent_services(pool) for m in s.methods
             for t in (m.input_type, m.output_type)]
    return upstream_closure(roots)


def missing_from_closure(fds, pool):
    """Upstream types reachable from the agent/connector RPCs that the project does not declare."""
    ours = index_project(fds)
    services = upstream_agent_services(pool)
    messages, enums = agent_rpc_closure(pool)
    out = []
    for s in services:
        if s.full_name not in ours.services:
            out.append("service %s is not declared" % s.full_name)
    for name, msg in sorted(messages.items()):
        if name.startswith("google.protobuf."):
            continue  # well-known types come from protoc's own include path
        if msg.GetOptions().map_entry and name in ours.messages:
            continue
        if name not in ours.messages:
            kind = "map entry" if msg.GetOptions().map_entry else "message"
            out.append("%s %s (upstream %s) is not declared" % (kind, name, msg.file.name))
    for name, enum in sorted(enums.items()):
        if name.startswith("google.protobuf."):
            continue
        if name not in ours.enums:
            out.append("enum %s (upstream %s) is not declared" % (name, enum.file.name))
    return out


def report(title, problems):
    return "%s: %d problem(s)\n  %s" % (title, len(problems), "\n  ".join(problems))


# --------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------

class ShortRepr:
    """Keeps pytest's failure output readable: a FileDescriptorSet's repr is pages long."""

    def __init__(self, fds):
        self.fds = fds

    def __repr__(self):
        return "<FileDescriptorSet: %d files>" % len(self.fds.file)


@pytest.fixture(scope="module")
def compiled():
    """The project's proto/ compiled by protoc (wrapped; the set is `.fds`)."""
    return ShortRepr(compile_protos())


@pytest.fixture(scope="module")
def pool():
    return upstream_pool()


# --------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------

def test_project_declares_both_protocols(compiled):
    ours = index_project(compiled.fds)
    for service in ("flyteidl.service.AsyncAgentService",
                    "flyteidl.service.SyncAgentService",
                    "flyteidl.service.AgentMetadataService",
                    "flyteidl2.connector.AsyncConnectorService",
                    "flyteidl2.connector.ConnectorMetadataService"):
        assert service in ours.services, "%s is not declared under proto/" % service


def test_every_project_file_is_in_a_checked_package(compiled):
    """No project file may escape the comparison by living in another package."""
    project_files = set(project_proto_files())
    strays = [f.name + " (package %r)" % f.package for f in compiled.fds.file
              if f.name in project_files
              and f.package.split(".", 1)[0] not in CHECKED_PACKAGES
              and f.package != OWN_PACKAGE]
    assert not strays, "files outside flyteidl.*, flyteidl2.* and %s: %s" % (OWN_PACKAGE, strays)


def test_declarations_match_upstream(compiled, pool):
    problems = compare_with_upstream(compiled.fds, pool)
    assert not problems, report("proto/ differs from flyteidl 1.16.8 / flyteidl2 2.0.53", problems)


def test_agent_rpc_closure_is_declared(compiled, pool):
    problems = missing_from_closure(compiled.fds, pool)
    assert not problems, report("types reachable from the agent/connector RPCs missing in proto/",
                                problems)


def test_comparison_covers_a_meaningful_amount(compiled, pool):
    """Guard against an index that silently found nothing to compare."""
    ours = index_project(compiled.fds)
    messages, _ = agent_rpc_closure(pool)
    checked = [n for n in messages if not n.startswith("google.protobuf.")]
    assert len(checked) > 150, "upstream closure unexpectedly small: %d" % len(checked)
    assert len(ours.messages) >= len(checked)
    assert sum(len(m.field) for m, _ in ours.messages.values()) > 500


def _find_message(fds, full_name):
    for fproto in fds.file:
        index = Index()
        index.add_file(fproto)
        if full_name in index.messages:
            return index.messages[full_name][0]
    raise KeyError(full_name)


def _field(msg, name):
    return next(f for f in msg.field if f.name == name)


def _renumber(fds):
    _field(_find_message(fds, "flyteidl.admin.TaskCategory"), "version").number = 7
    return "flyteidl.admin.TaskCategory.version (#7): number is 7, upstream has 2"


def _retype(fds):
    _field(_find_message(fds, "flyteidl2.connector.GetTaskRequest"), "resource_meta").type = \
        FDP.TYPE_STRING
    return "flyteidl2.connector.GetTaskRequest.resource_meta (#2): type is 'string', upstream has 'bytes'"


def _unrepeat(fds):
    _field(_find_message(fds, "flyteidl.admin.Agent"), "supported_task_categories").label = \
        FDP.LABEL_OPTIONAL
    return "flyteidl.admin.Agent.supported_task_categories (#4): repeated is False, upstream has True"


def _rename(fds):
    _field(_find_message(fds, "flyteidl.admin.CreateTaskRequest"), "inputs").name = "input"
    return "flyteidl.admin.CreateTaskRequest.input (#1): field not in upstream, upstream #1 is 'inputs'"


def _leave_oneof(fds):
    msg = _find_message(fds, "flyteidl.core.Literal")
    _field(msg, "scalar").ClearField("oneof_index")
    return "flyteidl.core.Literal.scalar (#1): oneof is None, upstream has 'value'"


def _enum_value(fds):
    for fproto in fds.file:
        index = Index()
        index.add_file(fproto)
        if "flyteidl.core.TaskExecution.Phase" in index.enums:
            enum = index.enums["flyteidl.core.TaskExecution.Phase"][0]
            next(v for v in enum.value if v.name == "SUCCEEDED").number = 30
            return "flyteidl.core.TaskExecution.Phase.SUCCEEDED: number is 30, upstream has 3"
    raise KeyError("flyteidl.core.TaskExecution.Phase")


def _drop_field(fds):
    msg = _find_message(fds, "flyteidl.admin.Resource")
    msg.field.remove(_field(msg, "custom_info"))
    return "flyteidl.admin.Resource.custom_info (#6): upstream field not declared by the project"


def _map_value(fds):
    entry = _find_message(fds, "flyteidl2.core.Connection.SecretsEntry")
    _field(entry, "value").type = FDP.TYPE_BYTES
    return ("flyteidl2.core.Connection.secrets (#2): map is 'map<string,bytes>', "
            "upstream has 'map<string,string>'")


def _not_optional(fds):
    _field(_find_message(fds, "flyteidl2.core.Backoff"), "factor").proto3_optional = False
    return "flyteidl2.core.Backoff.factor (#2): proto3 optional is False, upstream has True"


def _streaming(fds):
    for fproto in fds.file:
        for svc in fproto.service:
            if fproto.package == "flyteidl.service" and svc.name == "AsyncAgentService":
                next(m for m in svc.method if m.name == "GetTaskLogs").server_streaming = False
                return ("flyteidl.service.AsyncAgentService/GetTaskLogs: server_streaming is "
                        "False, upstream has True")
    raise KeyError("flyteidl.service.AsyncAgentService")


@pytest.mark.parametrize("mutate", [_renumber, _retype, _unrepeat, _rename, _leave_oneof,
                                    _drop_field, _map_value, _not_optional, _enum_value,
                                    _streaming])
def test_comparison_reports_a_mutation(compiled, pool, mutate):
    """The comparison is known to be able to fail: a single change to a copy is reported."""
    mutated = copy.deepcopy(compiled.fds)
    expected = mutate(mutated)
    before = set(compare_with_upstream(compiled.fds, pool))
    after = set(compare_with_upstream(mutated, pool))
    assert expected in after - before, report("expected %r among the new problems" % expected,
                                              sorted(after - before))


def test_closure_check_reports_a_missing_message(compiled, pool):
    mutated = copy.deepcopy(compiled.fds)
    for fproto in mutated.file:
        if fproto.package == "flyteidl.core":
            for i, msg in enumerate(fproto.message_type):
                if msg.name == "TaskLog":
                    del fproto.message_type[i]
                    break
    problems = missing_from_closure(mutated, pool)
    assert any(p.startswith("message flyteidl.core.TaskLog ") for p in problems), problems


def test_own_plugin_package_compiles(compiled):
    files = {f.name: f for f in compiled.fds.file}
    assert OWN_PROTO in files, "%s was not compiled" % OWN_PROTO
    own = files[OWN_PROTO]
    assert own.package == OWN_PACKAGE
    assert own.message_type, "%s declares no messages" % OWN_PROTO


def test_own_plugin_package_references_only_real_flyteidl_types(compiled, pool):
    own = next(f for f in compiled.fds.file if f.name == OWN_PROTO)
    index = Index()
    index.add_file(own)
    problems, referenced = [], []
    for name, (msg, _) in sorted(index.messages.items()):
        for f in msg.field:
            target = f.type_name.lstrip(".")
            if not in_checked_package(target):
                continue
            referenced.append(target)
            try:
                if f.type == FDP.TYPE_ENUM:
                    pool.FindEnumTypeByName(target)
                else:
                    pool.FindMessageTypeByName(target)
            except KeyError:
                problems.append("%s.%s refers to %s, which upstream does not have"
                                % (name, f.name, target))
    assert referenced, "%s refers to no flyteidl type (expected e.g. TaskCategory)" % OWN_PROTO
    assert not problems, report("%s references unknown flyteidl types" % OWN_PROTO, problems)
