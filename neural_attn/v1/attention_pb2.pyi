from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Backend(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BACKEND_UNSPECIFIED: _ClassVar[Backend]
    TENSORFLOW: _ClassVar[Backend]
    PYTORCH: _ClassVar[Backend]

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    FLOAT32: _ClassVar[DType]
    FLOAT16: _ClassVar[DType]
    FLOAT64: _ClassVar[DType]
    INT32: _ClassVar[DType]
    INT64: _ClassVar[DType]

class WeightsFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WEIGHTS_FORMAT_UNSPECIFIED: _ClassVar[WeightsFormat]
    NEUTRAL_NPZ: _ClassVar[WeightsFormat]
    KERAS_WEIGHTS_H5: _ClassVar[WeightsFormat]
    KERAS_ARCHIVE: _ClassVar[WeightsFormat]
    TORCH_STATE_DICT: _ClassVar[WeightsFormat]
    SAFETENSORS: _ClassVar[WeightsFormat]

class PoolMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    POOL_MODE_UNSPECIFIED: _ClassVar[PoolMode]
    MAX: _ClassVar[PoolMode]
    MEAN: _ClassVar[PoolMode]
BACKEND_UNSPECIFIED: Backend
TENSORFLOW: Backend
PYTORCH: Backend
DTYPE_UNSPECIFIED: DType
FLOAT32: DType
FLOAT16: DType
FLOAT64: DType
INT32: DType
INT64: DType
WEIGHTS_FORMAT_UNSPECIFIED: WeightsFormat
NEUTRAL_NPZ: WeightsFormat
KERAS_WEIGHTS_H5: WeightsFormat
KERAS_ARCHIVE: WeightsFormat
TORCH_STATE_DICT: WeightsFormat
SAFETENSORS: WeightsFormat
POOL_MODE_UNSPECIFIED: PoolMode
MAX: PoolMode
MEAN: PoolMode

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "content")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    dtype: DType
    shape: _containers.RepeatedScalarFieldContainer[int]
    content: bytes
    def __init__(self, dtype: _Optional[_Union[DType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., content: _Optional[bytes] = ...) -> None: ...

class Weights(_message.Message):
    __slots__ = ("content", "path", "format", "filename")
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    content: bytes
    path: str
    format: WeightsFormat
    filename: str
    def __init__(self, content: _Optional[bytes] = ..., path: _Optional[str] = ..., format: _Optional[_Union[WeightsFormat, str]] = ..., filename: _Optional[str] = ...) -> None: ...

class CompileRequest(_message.Message):
    __slots__ = ("source", "filename", "backend", "seed", "network", "weights")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    source: str
    filename: str
    backend: Backend
    seed: int
    network: str
    weights: Weights
    def __init__(self, source: _Optional[str] = ..., filename: _Optional[str] = ..., backend: _Optional[_Union[Backend, str]] = ..., seed: _Optional[int] = ..., network: _Optional[str] = ..., weights: _Optional[_Union[Weights, _Mapping]] = ...) -> None: ...

class ExportWeightsRequest(_message.Message):
    __slots__ = ("model", "format")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    model: CompileRequest
    format: WeightsFormat
    def __init__(self, model: _Optional[_Union[CompileRequest, _Mapping]] = ..., format: _Optional[_Union[WeightsFormat, str]] = ...) -> None: ...

class WeightsFile(_message.Message):
    __slots__ = ("model_id", "content")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    content: bytes
    def __init__(self, model_id: _Optional[str] = ..., content: _Optional[bytes] = ...) -> None: ...

class ServerInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class BackendInfo(_message.Message):
    __slots__ = ("name", "available", "version", "device", "detail")
    NAME_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    name: str
    available: bool
    version: str
    device: str
    detail: str
    def __init__(self, name: _Optional[str] = ..., available: _Optional[bool] = ..., version: _Optional[str] = ..., device: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class ServerInfo(_message.Message):
    __slots__ = ("version", "backends", "default_backend", "max_message_bytes", "max_sequence_length", "weights_directory")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    BACKENDS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_BACKEND_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_SEQUENCE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_DIRECTORY_FIELD_NUMBER: _ClassVar[int]
    version: str
    backends: _containers.RepeatedCompositeFieldContainer[BackendInfo]
    default_backend: str
    max_message_bytes: int
    max_sequence_length: int
    weights_directory: bool
    def __init__(self, version: _Optional[str] = ..., backends: _Optional[_Iterable[_Union[BackendInfo, _Mapping]]] = ..., default_backend: _Optional[str] = ..., max_message_bytes: _Optional[int] = ..., max_sequence_length: _Optional[int] = ..., weights_directory: _Optional[bool] = ...) -> None: ...

class LayerInfo(_message.Message):
    __slots__ = ("name", "type", "input_shape", "output_shape", "is_attention", "num_heads", "line")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    INPUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    IS_ATTENTION_FIELD_NUMBER: _ClassVar[int]
    NUM_HEADS_FIELD_NUMBER: _ClassVar[int]
    LINE_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: str
    input_shape: _containers.RepeatedScalarFieldContainer[int]
    output_shape: _containers.RepeatedScalarFieldContainer[int]
    is_attention: bool
    num_heads: int
    line: int
    def __init__(self, name: _Optional[str] = ..., type: _Optional[str] = ..., input_shape: _Optional[_Iterable[int]] = ..., output_shape: _Optional[_Iterable[int]] = ..., is_attention: _Optional[bool] = ..., num_heads: _Optional[int] = ..., line: _Optional[int] = ...) -> None: ...

class InputSpec(_message.Message):
    __slots__ = ("shape", "dtype", "description")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: DType
    description: str
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[_Union[DType, str]] = ..., description: _Optional[str] = ...) -> None: ...

class CompileResponse(_message.Message):
    __slots__ = ("model_id", "backend", "network_name", "generated_code", "layers", "attention_layers", "inputs", "warnings", "device", "parameter_count", "attention_path", "cached", "weights_sha256", "embedding_layer", "vocab_size")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    NETWORK_NAME_FIELD_NUMBER: _ClassVar[int]
    GENERATED_CODE_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_LAYERS_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    PARAMETER_COUNT_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_PATH_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_SHA256_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_LAYER_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    backend: Backend
    network_name: str
    generated_code: str
    layers: _containers.RepeatedCompositeFieldContainer[LayerInfo]
    attention_layers: _containers.RepeatedScalarFieldContainer[str]
    inputs: _containers.RepeatedCompositeFieldContainer[InputSpec]
    warnings: _containers.RepeatedScalarFieldContainer[str]
    device: str
    parameter_count: int
    attention_path: str
    cached: bool
    weights_sha256: str
    embedding_layer: str
    vocab_size: int
    def __init__(self, model_id: _Optional[str] = ..., backend: _Optional[_Union[Backend, str]] = ..., network_name: _Optional[str] = ..., generated_code: _Optional[str] = ..., layers: _Optional[_Iterable[_Union[LayerInfo, _Mapping]]] = ..., attention_layers: _Optional[_Iterable[str]] = ..., inputs: _Optional[_Iterable[_Union[InputSpec, _Mapping]]] = ..., warnings: _Optional[_Iterable[str]] = ..., device: _Optional[str] = ..., parameter_count: _Optional[int] = ..., attention_path: _Optional[str] = ..., cached: _Optional[bool] = ..., weights_sha256: _Optional[str] = ..., embedding_layer: _Optional[str] = ..., vocab_size: _Optional[int] = ...) -> None: ...

class ExtractRequest(_message.Message):
    __slots__ = ("model_id", "compile", "input", "layer_names", "head", "output_dtype", "max_chunk_bytes", "sequence_length", "window", "pooling")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    COMPILE_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    LAYER_NAMES_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_DTYPE_FIELD_NUMBER: _ClassVar[int]
    MAX_CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    POOLING_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    compile: CompileRequest
    input: Tensor
    layer_names: _containers.RepeatedScalarFieldContainer[str]
    head: int
    output_dtype: DType
    max_chunk_bytes: int
    sequence_length: int
    window: Window
    pooling: Pooling
    def __init__(self, model_id: _Optional[str] = ..., compile: _Optional[_Union[CompileRequest, _Mapping]] = ..., input: _Optional[_Union[Tensor, _Mapping]] = ..., layer_names: _Optional[_Iterable[str]] = ..., head: _Optional[int] = ..., output_dtype: _Optional[_Union[DType, str]] = ..., max_chunk_bytes: _Optional[int] = ..., sequence_length: _Optional[int] = ..., window: _Optional[_Union[Window, _Mapping]] = ..., pooling: _Optional[_Union[Pooling, _Mapping]] = ...) -> None: ...

class Window(_message.Message):
    __slots__ = ("query_start", "query_stop", "key_start", "key_stop")
    QUERY_START_FIELD_NUMBER: _ClassVar[int]
    QUERY_STOP_FIELD_NUMBER: _ClassVar[int]
    KEY_START_FIELD_NUMBER: _ClassVar[int]
    KEY_STOP_FIELD_NUMBER: _ClassVar[int]
    query_start: int
    query_stop: int
    key_start: int
    key_stop: int
    def __init__(self, query_start: _Optional[int] = ..., query_stop: _Optional[int] = ..., key_start: _Optional[int] = ..., key_stop: _Optional[int] = ...) -> None: ...

class Pooling(_message.Message):
    __slots__ = ("target_size", "mode")
    TARGET_SIZE_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    target_size: int
    mode: PoolMode
    def __init__(self, target_size: _Optional[int] = ..., mode: _Optional[_Union[PoolMode, str]] = ...) -> None: ...

class Reduction(_message.Message):
    __slots__ = ("source_shape", "query_start", "query_stop", "key_start", "key_stop", "query_block", "key_block", "mode")
    SOURCE_SHAPE_FIELD_NUMBER: _ClassVar[int]
    QUERY_START_FIELD_NUMBER: _ClassVar[int]
    QUERY_STOP_FIELD_NUMBER: _ClassVar[int]
    KEY_START_FIELD_NUMBER: _ClassVar[int]
    KEY_STOP_FIELD_NUMBER: _ClassVar[int]
    QUERY_BLOCK_FIELD_NUMBER: _ClassVar[int]
    KEY_BLOCK_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    source_shape: _containers.RepeatedScalarFieldContainer[int]
    query_start: int
    query_stop: int
    key_start: int
    key_stop: int
    query_block: int
    key_block: int
    mode: PoolMode
    def __init__(self, source_shape: _Optional[_Iterable[int]] = ..., query_start: _Optional[int] = ..., query_stop: _Optional[int] = ..., key_start: _Optional[int] = ..., key_stop: _Optional[int] = ..., query_block: _Optional[int] = ..., key_block: _Optional[int] = ..., mode: _Optional[_Union[PoolMode, str]] = ...) -> None: ...

class AttentionChunk(_message.Message):
    __slots__ = ("model_id", "layer_name", "layer_index", "shape", "dtype", "offset", "element_count", "content", "chunk_index", "num_chunks", "head", "reduction")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    LAYER_NAME_FIELD_NUMBER: _ClassVar[int]
    LAYER_INDEX_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    ELEMENT_COUNT_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    CHUNK_INDEX_FIELD_NUMBER: _ClassVar[int]
    NUM_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    REDUCTION_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    layer_name: str
    layer_index: int
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: DType
    offset: int
    element_count: int
    content: bytes
    chunk_index: int
    num_chunks: int
    head: int
    reduction: Reduction
    def __init__(self, model_id: _Optional[str] = ..., layer_name: _Optional[str] = ..., layer_index: _Optional[int] = ..., shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[_Union[DType, str]] = ..., offset: _Optional[int] = ..., element_count: _Optional[int] = ..., content: _Optional[bytes] = ..., chunk_index: _Optional[int] = ..., num_chunks: _Optional[int] = ..., head: _Optional[int] = ..., reduction: _Optional[_Union[Reduction, _Mapping]] = ...) -> None: ...

class NamedTensor(_message.Message):
    __slots__ = ("name", "tensor")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    name: str
    tensor: Tensor
    def __init__(self, name: _Optional[str] = ..., tensor: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class AttentionSet(_message.Message):
    __slots__ = ("layers",)
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    layers: _containers.RepeatedCompositeFieldContainer[NamedTensor]
    def __init__(self, layers: _Optional[_Iterable[_Union[NamedTensor, _Mapping]]] = ...) -> None: ...

class AnalyzeRequest(_message.Message):
    __slots__ = ("attention", "extract")
    ATTENTION_FIELD_NUMBER: _ClassVar[int]
    EXTRACT_FIELD_NUMBER: _ClassVar[int]
    attention: AttentionSet
    extract: ExtractRequest
    def __init__(self, attention: _Optional[_Union[AttentionSet, _Mapping]] = ..., extract: _Optional[_Union[ExtractRequest, _Mapping]] = ...) -> None: ...

class HeadMetrics(_message.Message):
    __slots__ = ("head", "entropy", "max_attention", "diagonal_strength", "mean", "std", "min", "max", "pattern", "mean_distance", "normalized_entropy")
    HEAD_FIELD_NUMBER: _ClassVar[int]
    ENTROPY_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTENTION_FIELD_NUMBER: _ClassVar[int]
    DIAGONAL_STRENGTH_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    STD_FIELD_NUMBER: _ClassVar[int]
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    PATTERN_FIELD_NUMBER: _ClassVar[int]
    MEAN_DISTANCE_FIELD_NUMBER: _ClassVar[int]
    NORMALIZED_ENTROPY_FIELD_NUMBER: _ClassVar[int]
    head: int
    entropy: float
    max_attention: float
    diagonal_strength: float
    mean: float
    std: float
    min: float
    max: float
    pattern: str
    mean_distance: float
    normalized_entropy: float
    def __init__(self, head: _Optional[int] = ..., entropy: _Optional[float] = ..., max_attention: _Optional[float] = ..., diagonal_strength: _Optional[float] = ..., mean: _Optional[float] = ..., std: _Optional[float] = ..., min: _Optional[float] = ..., max: _Optional[float] = ..., pattern: _Optional[str] = ..., mean_distance: _Optional[float] = ..., normalized_entropy: _Optional[float] = ...) -> None: ...

class LayerAnalysis(_message.Message):
    __slots__ = ("layer_name", "shape", "num_heads", "heads", "avg_entropy", "avg_max_attention", "avg_diagonal_strength")
    LAYER_NAME_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    NUM_HEADS_FIELD_NUMBER: _ClassVar[int]
    HEADS_FIELD_NUMBER: _ClassVar[int]
    AVG_ENTROPY_FIELD_NUMBER: _ClassVar[int]
    AVG_MAX_ATTENTION_FIELD_NUMBER: _ClassVar[int]
    AVG_DIAGONAL_STRENGTH_FIELD_NUMBER: _ClassVar[int]
    layer_name: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    num_heads: int
    heads: _containers.RepeatedCompositeFieldContainer[HeadMetrics]
    avg_entropy: float
    avg_max_attention: float
    avg_diagonal_strength: float
    def __init__(self, layer_name: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., num_heads: _Optional[int] = ..., heads: _Optional[_Iterable[_Union[HeadMetrics, _Mapping]]] = ..., avg_entropy: _Optional[float] = ..., avg_max_attention: _Optional[float] = ..., avg_diagonal_strength: _Optional[float] = ...) -> None: ...

class AnalyzeResponse(_message.Message):
    __slots__ = ("model_id", "layers", "rollout", "rollout_pooling", "pooled")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_POOLING_FIELD_NUMBER: _ClassVar[int]
    POOLED_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    layers: _containers.RepeatedCompositeFieldContainer[LayerAnalysis]
    rollout: Tensor
    rollout_pooling: RolloutPooling
    pooled: _containers.RepeatedCompositeFieldContainer[PooledAttention]
    def __init__(self, model_id: _Optional[str] = ..., layers: _Optional[_Iterable[_Union[LayerAnalysis, _Mapping]]] = ..., rollout: _Optional[_Union[Tensor, _Mapping]] = ..., rollout_pooling: _Optional[_Union[RolloutPooling, _Mapping]] = ..., pooled: _Optional[_Iterable[_Union[PooledAttention, _Mapping]]] = ...) -> None: ...

class PooledAttention(_message.Message):
    __slots__ = ("layer_name", "attention", "reduction")
    LAYER_NAME_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_FIELD_NUMBER: _ClassVar[int]
    REDUCTION_FIELD_NUMBER: _ClassVar[int]
    layer_name: str
    attention: Tensor
    reduction: Reduction
    def __init__(self, layer_name: _Optional[str] = ..., attention: _Optional[_Union[Tensor, _Mapping]] = ..., reduction: _Optional[_Union[Reduction, _Mapping]] = ...) -> None: ...

class RolloutPooling(_message.Message):
    __slots__ = ("source_length", "block")
    SOURCE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    BLOCK_FIELD_NUMBER: _ClassVar[int]
    source_length: int
    block: int
    def __init__(self, source_length: _Optional[int] = ..., block: _Optional[int] = ...) -> None: ...

class AnalysisMask(_message.Message):
    __slots__ = ("mask_padding", "padding_id", "positions")
    MASK_PADDING_FIELD_NUMBER: _ClassVar[int]
    PADDING_ID_FIELD_NUMBER: _ClassVar[int]
    POSITIONS_FIELD_NUMBER: _ClassVar[int]
    mask_padding: bool
    padding_id: int
    positions: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, mask_padding: _Optional[bool] = ..., padding_id: _Optional[int] = ..., positions: _Optional[_Iterable[int]] = ...) -> None: ...

class Provenance(_message.Message):
    __slots__ = ("source", "model_id", "backend", "attention_path", "device", "weights_sha256", "dtype", "masked", "rows_sum_to_one", "max_row_error", "row_tolerance", "finite", "rows", "fully_masked_rows", "items")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_PATH_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_SHA256_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    MASKED_FIELD_NUMBER: _ClassVar[int]
    ROWS_SUM_TO_ONE_FIELD_NUMBER: _ClassVar[int]
    MAX_ROW_ERROR_FIELD_NUMBER: _ClassVar[int]
    ROW_TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    FINITE_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    FULLY_MASKED_ROWS_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    source: str
    model_id: str
    backend: str
    attention_path: str
    device: str
    weights_sha256: str
    dtype: str
    masked: _containers.RepeatedScalarFieldContainer[str]
    rows_sum_to_one: bool
    max_row_error: float
    row_tolerance: float
    finite: bool
    rows: int
    fully_masked_rows: int
    items: int
    def __init__(self, source: _Optional[str] = ..., model_id: _Optional[str] = ..., backend: _Optional[str] = ..., attention_path: _Optional[str] = ..., device: _Optional[str] = ..., weights_sha256: _Optional[str] = ..., dtype: _Optional[str] = ..., masked: _Optional[_Iterable[str]] = ..., rows_sum_to_one: _Optional[bool] = ..., max_row_error: _Optional[float] = ..., row_tolerance: _Optional[float] = ..., finite: _Optional[bool] = ..., rows: _Optional[int] = ..., fully_masked_rows: _Optional[int] = ..., items: _Optional[int] = ...) -> None: ...

class HeadsRequest(_message.Message):
    __slots__ = ("attention", "extract", "mask", "token_ids")
    ATTENTION_FIELD_NUMBER: _ClassVar[int]
    EXTRACT_FIELD_NUMBER: _ClassVar[int]
    MASK_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    attention: AttentionSet
    extract: ExtractRequest
    mask: AnalysisMask
    token_ids: Tensor
    def __init__(self, attention: _Optional[_Union[AttentionSet, _Mapping]] = ..., extract: _Optional[_Union[ExtractRequest, _Mapping]] = ..., mask: _Optional[_Union[AnalysisMask, _Mapping]] = ..., token_ids: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class HeadsAnalysis(_message.Message):
    __slots__ = ("model_id", "layers", "provenance")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    PROVENANCE_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    layers: _containers.RepeatedCompositeFieldContainer[LayerAnalysis]
    provenance: Provenance
    def __init__(self, model_id: _Optional[str] = ..., layers: _Optional[_Iterable[_Union[LayerAnalysis, _Mapping]]] = ..., provenance: _Optional[_Union[Provenance, _Mapping]] = ...) -> None: ...

class HeadRef(_message.Message):
    __slots__ = ("layer", "head")
    LAYER_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    layer: str
    head: int
    def __init__(self, layer: _Optional[str] = ..., head: _Optional[int] = ...) -> None: ...

class SimilarityRequest(_message.Message):
    __slots__ = ("heads", "threshold")
    HEADS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    heads: HeadsRequest
    threshold: float
    def __init__(self, heads: _Optional[_Union[HeadsRequest, _Mapping]] = ..., threshold: _Optional[float] = ...) -> None: ...

class HeadPair(_message.Message):
    __slots__ = ("a", "b", "distance", "same_layer")
    A_FIELD_NUMBER: _ClassVar[int]
    B_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_FIELD_NUMBER: _ClassVar[int]
    SAME_LAYER_FIELD_NUMBER: _ClassVar[int]
    a: int
    b: int
    distance: float
    same_layer: bool
    def __init__(self, a: _Optional[int] = ..., b: _Optional[int] = ..., distance: _Optional[float] = ..., same_layer: _Optional[bool] = ...) -> None: ...

class HeadGroup(_message.Message):
    __slots__ = ("heads",)
    HEADS_FIELD_NUMBER: _ClassVar[int]
    heads: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, heads: _Optional[_Iterable[int]] = ...) -> None: ...

class SimilarityResponse(_message.Message):
    __slots__ = ("model_id", "heads", "distance", "pairs", "groups", "threshold", "provenance")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    HEADS_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_FIELD_NUMBER: _ClassVar[int]
    PAIRS_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    PROVENANCE_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    heads: _containers.RepeatedCompositeFieldContainer[HeadRef]
    distance: Tensor
    pairs: _containers.RepeatedCompositeFieldContainer[HeadPair]
    groups: _containers.RepeatedCompositeFieldContainer[HeadGroup]
    threshold: float
    provenance: Provenance
    def __init__(self, model_id: _Optional[str] = ..., heads: _Optional[_Iterable[_Union[HeadRef, _Mapping]]] = ..., distance: _Optional[_Union[Tensor, _Mapping]] = ..., pairs: _Optional[_Iterable[_Union[HeadPair, _Mapping]]] = ..., groups: _Optional[_Iterable[_Union[HeadGroup, _Mapping]]] = ..., threshold: _Optional[float] = ..., provenance: _Optional[_Union[Provenance, _Mapping]] = ...) -> None: ...

class AblationRequest(_message.Message):
    __slots__ = ("extract", "heads", "heads_per_pass")
    EXTRACT_FIELD_NUMBER: _ClassVar[int]
    HEADS_FIELD_NUMBER: _ClassVar[int]
    HEADS_PER_PASS_FIELD_NUMBER: _ClassVar[int]
    extract: ExtractRequest
    heads: _containers.RepeatedCompositeFieldContainer[HeadRef]
    heads_per_pass: int
    def __init__(self, extract: _Optional[_Union[ExtractRequest, _Mapping]] = ..., heads: _Optional[_Iterable[_Union[HeadRef, _Mapping]]] = ..., heads_per_pass: _Optional[int] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("stage", "done", "total")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    stage: str
    done: int
    total: int
    def __init__(self, stage: _Optional[str] = ..., done: _Optional[int] = ..., total: _Optional[int] = ...) -> None: ...

class HeadImpact(_message.Message):
    __slots__ = ("head", "rank", "l2", "relative_l2", "kl", "pattern")
    HEAD_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    L2_FIELD_NUMBER: _ClassVar[int]
    RELATIVE_L2_FIELD_NUMBER: _ClassVar[int]
    KL_FIELD_NUMBER: _ClassVar[int]
    PATTERN_FIELD_NUMBER: _ClassVar[int]
    head: HeadRef
    rank: int
    l2: float
    relative_l2: float
    kl: float
    pattern: str
    def __init__(self, head: _Optional[_Union[HeadRef, _Mapping]] = ..., rank: _Optional[int] = ..., l2: _Optional[float] = ..., relative_l2: _Optional[float] = ..., kl: _Optional[float] = ..., pattern: _Optional[str] = ...) -> None: ...

class AblationResult(_message.Message):
    __slots__ = ("model_id", "heads", "softmax_output", "ranked_by", "provenance")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    HEADS_FIELD_NUMBER: _ClassVar[int]
    SOFTMAX_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    RANKED_BY_FIELD_NUMBER: _ClassVar[int]
    PROVENANCE_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    heads: _containers.RepeatedCompositeFieldContainer[HeadImpact]
    softmax_output: bool
    ranked_by: str
    provenance: Provenance
    def __init__(self, model_id: _Optional[str] = ..., heads: _Optional[_Iterable[_Union[HeadImpact, _Mapping]]] = ..., softmax_output: _Optional[bool] = ..., ranked_by: _Optional[str] = ..., provenance: _Optional[_Union[Provenance, _Mapping]] = ...) -> None: ...

class AblationUpdate(_message.Message):
    __slots__ = ("progress", "result")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    progress: Progress
    result: AblationResult
    def __init__(self, progress: _Optional[_Union[Progress, _Mapping]] = ..., result: _Optional[_Union[AblationResult, _Mapping]] = ...) -> None: ...

class ProfileRequest(_message.Message):
    __slots__ = ("model_id", "compile", "input", "mask", "layer_names", "batch_size", "total_items")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    COMPILE_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    MASK_FIELD_NUMBER: _ClassVar[int]
    LAYER_NAMES_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_ITEMS_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    compile: CompileRequest
    input: Tensor
    mask: AnalysisMask
    layer_names: _containers.RepeatedScalarFieldContainer[str]
    batch_size: int
    total_items: int
    def __init__(self, model_id: _Optional[str] = ..., compile: _Optional[_Union[CompileRequest, _Mapping]] = ..., input: _Optional[_Union[Tensor, _Mapping]] = ..., mask: _Optional[_Union[AnalysisMask, _Mapping]] = ..., layer_names: _Optional[_Iterable[str]] = ..., batch_size: _Optional[int] = ..., total_items: _Optional[int] = ...) -> None: ...

class MetricDistribution(_message.Message):
    __slots__ = ("metric", "mean", "std", "quantiles")
    METRIC_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    STD_FIELD_NUMBER: _ClassVar[int]
    QUANTILES_FIELD_NUMBER: _ClassVar[int]
    metric: str
    mean: float
    std: float
    quantiles: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, metric: _Optional[str] = ..., mean: _Optional[float] = ..., std: _Optional[float] = ..., quantiles: _Optional[_Iterable[float]] = ...) -> None: ...

class LabelShare(_message.Message):
    __slots__ = ("label", "share")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    label: str
    share: float
    def __init__(self, label: _Optional[str] = ..., share: _Optional[float] = ...) -> None: ...

class HeadProfile(_message.Message):
    __slots__ = ("head", "samples", "metrics", "labels")
    HEAD_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    head: HeadRef
    samples: int
    metrics: _containers.RepeatedCompositeFieldContainer[MetricDistribution]
    labels: _containers.RepeatedCompositeFieldContainer[LabelShare]
    def __init__(self, head: _Optional[_Union[HeadRef, _Mapping]] = ..., samples: _Optional[int] = ..., metrics: _Optional[_Iterable[_Union[MetricDistribution, _Mapping]]] = ..., labels: _Optional[_Iterable[_Union[LabelShare, _Mapping]]] = ...) -> None: ...

class ProfileResult(_message.Message):
    __slots__ = ("model_id", "heads", "quantile_levels", "exact_quantiles", "samples", "provenance")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    HEADS_FIELD_NUMBER: _ClassVar[int]
    QUANTILE_LEVELS_FIELD_NUMBER: _ClassVar[int]
    EXACT_QUANTILES_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    PROVENANCE_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    heads: _containers.RepeatedCompositeFieldContainer[HeadProfile]
    quantile_levels: _containers.RepeatedScalarFieldContainer[float]
    exact_quantiles: bool
    samples: int
    provenance: Provenance
    def __init__(self, model_id: _Optional[str] = ..., heads: _Optional[_Iterable[_Union[HeadProfile, _Mapping]]] = ..., quantile_levels: _Optional[_Iterable[float]] = ..., exact_quantiles: _Optional[bool] = ..., samples: _Optional[int] = ..., provenance: _Optional[_Union[Provenance, _Mapping]] = ...) -> None: ...

class ProfileUpdate(_message.Message):
    __slots__ = ("progress", "result")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    progress: Progress
    result: ProfileResult
    def __init__(self, progress: _Optional[_Union[Progress, _Mapping]] = ..., result: _Optional[_Union[ProfileResult, _Mapping]] = ...) -> None: ...

class CompareRequest(_message.Message):
    __slots__ = ("model_a", "model_b", "input", "sequence_length", "mask", "layer_names")
    MODEL_A_FIELD_NUMBER: _ClassVar[int]
    MODEL_B_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    MASK_FIELD_NUMBER: _ClassVar[int]
    LAYER_NAMES_FIELD_NUMBER: _ClassVar[int]
    model_a: CompileRequest
    model_b: CompileRequest
    input: Tensor
    sequence_length: int
    mask: AnalysisMask
    layer_names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, model_a: _Optional[_Union[CompileRequest, _Mapping]] = ..., model_b: _Optional[_Union[CompileRequest, _Mapping]] = ..., input: _Optional[_Union[Tensor, _Mapping]] = ..., sequence_length: _Optional[int] = ..., mask: _Optional[_Union[AnalysisMask, _Mapping]] = ..., layer_names: _Optional[_Iterable[str]] = ...) -> None: ...

class MetricDelta(_message.Message):
    __slots__ = ("metric", "a", "b", "delta")
    METRIC_FIELD_NUMBER: _ClassVar[int]
    A_FIELD_NUMBER: _ClassVar[int]
    B_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    metric: str
    a: float
    b: float
    delta: float
    def __init__(self, metric: _Optional[str] = ..., a: _Optional[float] = ..., b: _Optional[float] = ..., delta: _Optional[float] = ...) -> None: ...

class HeadComparison(_message.Message):
    __slots__ = ("head", "rank", "js_distance", "js_divergence", "pattern_a", "pattern_b", "metrics")
    HEAD_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    JS_DISTANCE_FIELD_NUMBER: _ClassVar[int]
    JS_DIVERGENCE_FIELD_NUMBER: _ClassVar[int]
    PATTERN_A_FIELD_NUMBER: _ClassVar[int]
    PATTERN_B_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    head: HeadRef
    rank: int
    js_distance: float
    js_divergence: float
    pattern_a: str
    pattern_b: str
    metrics: _containers.RepeatedCompositeFieldContainer[MetricDelta]
    def __init__(self, head: _Optional[_Union[HeadRef, _Mapping]] = ..., rank: _Optional[int] = ..., js_distance: _Optional[float] = ..., js_divergence: _Optional[float] = ..., pattern_a: _Optional[str] = ..., pattern_b: _Optional[str] = ..., metrics: _Optional[_Iterable[_Union[MetricDelta, _Mapping]]] = ...) -> None: ...

class CompareResponse(_message.Message):
    __slots__ = ("model_id_a", "model_id_b", "heads", "unmatched_layers", "provenance_a", "provenance_b")
    MODEL_ID_A_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_B_FIELD_NUMBER: _ClassVar[int]
    HEADS_FIELD_NUMBER: _ClassVar[int]
    UNMATCHED_LAYERS_FIELD_NUMBER: _ClassVar[int]
    PROVENANCE_A_FIELD_NUMBER: _ClassVar[int]
    PROVENANCE_B_FIELD_NUMBER: _ClassVar[int]
    model_id_a: str
    model_id_b: str
    heads: _containers.RepeatedCompositeFieldContainer[HeadComparison]
    unmatched_layers: _containers.RepeatedScalarFieldContainer[str]
    provenance_a: Provenance
    provenance_b: Provenance
    def __init__(self, model_id_a: _Optional[str] = ..., model_id_b: _Optional[str] = ..., heads: _Optional[_Iterable[_Union[HeadComparison, _Mapping]]] = ..., unmatched_layers: _Optional[_Iterable[str]] = ..., provenance_a: _Optional[_Union[Provenance, _Mapping]] = ..., provenance_b: _Optional[_Union[Provenance, _Mapping]] = ...) -> None: ...
