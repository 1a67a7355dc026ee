"""Echo connectors for flytekit's server: the Python equivalents of plugins/echo.

Loaded by `pyflyte serve connector --modules flytekit_echo` (tests/bench/compare.py puts this
directory on sys.path). Same task types and the same behaviour as the Rust echo plugin:

* "Echo Sync Connector" (task type `echo_sync`): ExecuteTaskSync answers SUCCEEDED with the
  inputs as outputs.
* "Echo Async Connector" (task type `echo_async`): CreateTask keeps the inputs (the encoded
  LiteralMap, base64) in the resource meta; GetTask answers SUCCEEDED with them as outputs;
  DeleteTask does nothing.

Both answer with the message "echo" and custom_info {"plugin": "echo"}, as the Rust echo does
(it also names its version there).
"""

import base64
from dataclasses import dataclass
from typing import Optional

from flyteidl.core.execution_pb2 import TaskExecution
from flyteidl.core import literals_pb2
from flytekit.extend.backend.base_connector import (
    AsyncConnectorBase,
    ConnectorRegistry,
    Resource,
    ResourceMeta,
    SyncConnectorBase,
)
from flytekit.models.literals import LiteralMap
from flytekit.models.task import TaskTemplate


@dataclass
class EchoMetadata(ResourceMeta):
    created_by: str
    inputs: str  # base64 of the encoded LiteralMap ("" for none)


def _echoed(outputs: Optional[LiteralMap]) -> Resource:
    return Resource(phase=TaskExecution.SUCCEEDED, message="echo", outputs=outputs, custom_info={"plugin": "echo"})


class EchoAsyncConnector(AsyncConnectorBase):
    name = "Echo Async Connector"

    def __init__(self):
        super().__init__(task_type_name="echo_async", metadata_type=EchoMetadata)

    async def create(self, task_template: TaskTemplate, output_prefix: str = None, inputs: Optional[LiteralMap] = None,
                     **kwargs) -> EchoMetadata:
        encoded = base64.b64encode(inputs.to_flyte_idl().SerializeToString()).decode() if inputs else ""
        return EchoMetadata(created_by="flytekit-echo", inputs=encoded)

    async def get(self, resource_meta: EchoMetadata, **kwargs) -> Resource:
        outputs = None
        if resource_meta.inputs:
            pb = literals_pb2.LiteralMap()
            pb.ParseFromString(base64.b64decode(resource_meta.inputs))
            outputs = LiteralMap.from_flyte_idl(pb)
        return _echoed(outputs)

    async def delete(self, resource_meta: EchoMetadata, **kwargs):
        return None


class EchoSyncConnector(SyncConnectorBase):
    name = "Echo Sync Connector"

    def __init__(self):
        super().__init__(task_type_name="echo_sync")

    async def do(self, task_template: TaskTemplate, output_prefix: str, inputs: Optional[LiteralMap] = None,
                 **kwargs) -> Resource:
        return _echoed(inputs)


ConnectorRegistry.register(EchoAsyncConnector())
ConnectorRegistry.register(EchoSyncConnector())
