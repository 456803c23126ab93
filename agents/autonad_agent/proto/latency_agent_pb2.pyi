from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Precision(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRECISION_UNSPECIFIED: _ClassVar[Precision]
    PRECISION_FP32: _ClassVar[Precision]
    PRECISION_FP16: _ClassVar[Precision]
PRECISION_UNSPECIFIED: Precision
PRECISION_FP32: Precision
PRECISION_FP16: Precision

class TensorSpec(_message.Message):
    __slots__ = ("name", "shape", "dtype")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: str
    def __init__(self, name: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[str] = ...) -> None: ...

class MeasurementPolicy(_message.Message):
    __slots__ = ("warmup_runs", "warmup_ms", "min_runs", "min_duration_ms", "max_runs", "max_cv", "max_repeats")
    WARMUP_RUNS_FIELD_NUMBER: _ClassVar[int]
    WARMUP_MS_FIELD_NUMBER: _ClassVar[int]
    MIN_RUNS_FIELD_NUMBER: _ClassVar[int]
    MIN_DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_RUNS_FIELD_NUMBER: _ClassVar[int]
    MAX_CV_FIELD_NUMBER: _ClassVar[int]
    MAX_REPEATS_FIELD_NUMBER: _ClassVar[int]
    warmup_runs: int
    warmup_ms: float
    min_runs: int
    min_duration_ms: float
    max_runs: int
    max_cv: float
    max_repeats: int
    def __init__(self, warmup_runs: _Optional[int] = ..., warmup_ms: _Optional[float] = ..., min_runs: _Optional[int] = ..., min_duration_ms: _Optional[float] = ..., max_runs: _Optional[int] = ..., max_cv: _Optional[float] = ..., max_repeats: _Optional[int] = ...) -> None: ...

class MeasureHeader(_message.Message):
    __slots__ = ("inputs", "backend", "precision", "policy", "model_size", "fresh")
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    MODEL_SIZE_FIELD_NUMBER: _ClassVar[int]
    FRESH_FIELD_NUMBER: _ClassVar[int]
    inputs: _containers.RepeatedCompositeFieldContainer[TensorSpec]
    backend: str
    precision: Precision
    policy: MeasurementPolicy
    model_size: int
    fresh: bool
    def __init__(self, inputs: _Optional[_Iterable[_Union[TensorSpec, _Mapping]]] = ..., backend: _Optional[str] = ..., precision: _Optional[_Union[Precision, str]] = ..., policy: _Optional[_Union[MeasurementPolicy, _Mapping]] = ..., model_size: _Optional[int] = ..., fresh: _Optional[bool] = ...) -> None: ...

class MeasureRequest(_message.Message):
    __slots__ = ("header", "model_chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    MODEL_CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: MeasureHeader
    model_chunk: bytes
    def __init__(self, header: _Optional[_Union[MeasureHeader, _Mapping]] = ..., model_chunk: _Optional[bytes] = ...) -> None: ...

class LatencyStats(_message.Message):
    __slots__ = ("median_ms", "mean_ms", "min_ms", "max_ms", "p90_ms", "p99_ms", "std_ms", "cv", "runs", "outliers")
    MEDIAN_MS_FIELD_NUMBER: _ClassVar[int]
    MEAN_MS_FIELD_NUMBER: _ClassVar[int]
    MIN_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_MS_FIELD_NUMBER: _ClassVar[int]
    P90_MS_FIELD_NUMBER: _ClassVar[int]
    P99_MS_FIELD_NUMBER: _ClassVar[int]
    STD_MS_FIELD_NUMBER: _ClassVar[int]
    CV_FIELD_NUMBER: _ClassVar[int]
    RUNS_FIELD_NUMBER: _ClassVar[int]
    OUTLIERS_FIELD_NUMBER: _ClassVar[int]
    median_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float
    p90_ms: float
    p99_ms: float
    std_ms: float
    cv: float
    runs: int
    outliers: int
    def __init__(self, median_ms: _Optional[float] = ..., mean_ms: _Optional[float] = ..., min_ms: _Optional[float] = ..., max_ms: _Optional[float] = ..., p90_ms: _Optional[float] = ..., p99_ms: _Optional[float] = ..., std_ms: _Optional[float] = ..., cv: _Optional[float] = ..., runs: _Optional[int] = ..., outliers: _Optional[int] = ...) -> None: ...

class DeviceFingerprint(_message.Message):
    __slots__ = ("fields", "hash")
    class FieldsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    fields: _containers.ScalarMap[str, str]
    hash: str
    def __init__(self, fields: _Optional[_Mapping[str, str]] = ..., hash: _Optional[str] = ...) -> None: ...

class MeasureResponse(_message.Message):
    __slots__ = ("stats", "stable", "attempts", "cached", "backend", "precision", "inputs", "policy", "fingerprint", "model_sha256", "warmup_runs", "host")
    STATS_FIELD_NUMBER: _ClassVar[int]
    STABLE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    WARMUP_RUNS_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    stats: LatencyStats
    stable: bool
    attempts: int
    cached: bool
    backend: str
    precision: Precision
    inputs: _containers.RepeatedCompositeFieldContainer[TensorSpec]
    policy: MeasurementPolicy
    fingerprint: DeviceFingerprint
    model_sha256: str
    warmup_runs: int
    host: HostState
    def __init__(self, stats: _Optional[_Union[LatencyStats, _Mapping]] = ..., stable: _Optional[bool] = ..., attempts: _Optional[int] = ..., cached: _Optional[bool] = ..., backend: _Optional[str] = ..., precision: _Optional[_Union[Precision, str]] = ..., inputs: _Optional[_Iterable[_Union[TensorSpec, _Mapping]]] = ..., policy: _Optional[_Union[MeasurementPolicy, _Mapping]] = ..., fingerprint: _Optional[_Union[DeviceFingerprint, _Mapping]] = ..., model_sha256: _Optional[str] = ..., warmup_runs: _Optional[int] = ..., host: _Optional[_Union[HostState, _Mapping]] = ...) -> None: ...

class HostState(_message.Message):
    __slots__ = ("load_1m", "cpus", "cpu_mhz", "temperature_c")
    LOAD_1M_FIELD_NUMBER: _ClassVar[int]
    CPUS_FIELD_NUMBER: _ClassVar[int]
    CPU_MHZ_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_C_FIELD_NUMBER: _ClassVar[int]
    load_1m: float
    cpus: int
    cpu_mhz: float
    temperature_c: float
    def __init__(self, load_1m: _Optional[float] = ..., cpus: _Optional[int] = ..., cpu_mhz: _Optional[float] = ..., temperature_c: _Optional[float] = ...) -> None: ...

class GetDeviceInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class BackendInfo(_message.Message):
    __slots__ = ("name", "available", "reason", "precisions", "can_build_engine", "custom_op_domains", "details", "fingerprint")
    class DetailsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    PRECISIONS_FIELD_NUMBER: _ClassVar[int]
    CAN_BUILD_ENGINE_FIELD_NUMBER: _ClassVar[int]
    CUSTOM_OP_DOMAINS_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    name: str
    available: bool
    reason: str
    precisions: _containers.RepeatedScalarFieldContainer[Precision]
    can_build_engine: bool
    custom_op_domains: _containers.RepeatedScalarFieldContainer[str]
    details: _containers.ScalarMap[str, str]
    fingerprint: DeviceFingerprint
    def __init__(self, name: _Optional[str] = ..., available: _Optional[bool] = ..., reason: _Optional[str] = ..., precisions: _Optional[_Iterable[_Union[Precision, str]]] = ..., can_build_engine: _Optional[bool] = ..., custom_op_domains: _Optional[_Iterable[str]] = ..., details: _Optional[_Mapping[str, str]] = ..., fingerprint: _Optional[_Union[DeviceFingerprint, _Mapping]] = ...) -> None: ...

class DeviceInfo(_message.Message):
    __slots__ = ("agent_version", "default_backend", "backends", "max_model_bytes", "auth_required", "tls", "max_request_s", "first_run_timeout_s", "max_build_s")
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_BACKEND_FIELD_NUMBER: _ClassVar[int]
    BACKENDS_FIELD_NUMBER: _ClassVar[int]
    MAX_MODEL_BYTES_FIELD_NUMBER: _ClassVar[int]
    AUTH_REQUIRED_FIELD_NUMBER: _ClassVar[int]
    TLS_FIELD_NUMBER: _ClassVar[int]
    MAX_REQUEST_S_FIELD_NUMBER: _ClassVar[int]
    FIRST_RUN_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    MAX_BUILD_S_FIELD_NUMBER: _ClassVar[int]
    agent_version: str
    default_backend: str
    backends: _containers.RepeatedCompositeFieldContainer[BackendInfo]
    max_model_bytes: int
    auth_required: bool
    tls: bool
    max_request_s: float
    first_run_timeout_s: float
    max_build_s: float
    def __init__(self, agent_version: _Optional[str] = ..., default_backend: _Optional[str] = ..., backends: _Optional[_Iterable[_Union[BackendInfo, _Mapping]]] = ..., max_model_bytes: _Optional[int] = ..., auth_required: _Optional[bool] = ..., tls: _Optional[bool] = ..., max_request_s: _Optional[float] = ..., first_run_timeout_s: _Optional[float] = ..., max_build_s: _Optional[float] = ...) -> None: ...

class BuildEngineHeader(_message.Message):
    __slots__ = ("backend", "precision", "model_size")
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    MODEL_SIZE_FIELD_NUMBER: _ClassVar[int]
    backend: str
    precision: Precision
    model_size: int
    def __init__(self, backend: _Optional[str] = ..., precision: _Optional[_Union[Precision, str]] = ..., model_size: _Optional[int] = ...) -> None: ...

class BuildEngineRequest(_message.Message):
    __slots__ = ("header", "model_chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    MODEL_CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: BuildEngineHeader
    model_chunk: bytes
    def __init__(self, header: _Optional[_Union[BuildEngineHeader, _Mapping]] = ..., model_chunk: _Optional[bytes] = ...) -> None: ...

class EngineManifest(_message.Message):
    __slots__ = ("fields", "engine_size", "engine_sha256", "fingerprint")
    class FieldsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    ENGINE_SIZE_FIELD_NUMBER: _ClassVar[int]
    ENGINE_SHA256_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    fields: _containers.ScalarMap[str, str]
    engine_size: int
    engine_sha256: str
    fingerprint: DeviceFingerprint
    def __init__(self, fields: _Optional[_Mapping[str, str]] = ..., engine_size: _Optional[int] = ..., engine_sha256: _Optional[str] = ..., fingerprint: _Optional[_Union[DeviceFingerprint, _Mapping]] = ...) -> None: ...

class BuildEngineResponse(_message.Message):
    __slots__ = ("manifest", "engine_chunk")
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    ENGINE_CHUNK_FIELD_NUMBER: _ClassVar[int]
    manifest: EngineManifest
    engine_chunk: bytes
    def __init__(self, manifest: _Optional[_Union[EngineManifest, _Mapping]] = ..., engine_chunk: _Optional[bytes] = ...) -> None: ...
