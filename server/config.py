"""Server settings: limits that refuse work before it allocates, and deployment options."""

from __future__ import annotations

from dataclasses import dataclass

from neural_attn.limits import MAX_LAYERS  # no lark: the thin client may import this

MIB = 1024 * 1024


@dataclass(frozen=True)
class ServerConfig:
    """Everything `create_server` can be told; every limit is enforced before allocating."""

    default_backend: str = "tensorflow"
    device: str = "auto"  # auto | cpu | cuda
    max_message_bytes: int = 512 * MIB  # largest request (inline weights files are large)
    max_source_bytes: int = 1 * MIB  # largest .neural source
    max_input_elements: int = 16 * MIB  # elements of one input tensor
    max_sequence_length: int = 65536
    # Scores of one tile of query rows (batch x heads x rows x keys): a longer attention layer
    # is computed a tile at a time, so no more of it exists at once. 0: each backend's own
    # (`Backend.tile_elements`: 4 Mi for PyTorch, 16 Mi for TensorFlow).
    tile_elements: int = 0
    # Attention values a request may hold at once: one tile and the reduced layer for
    # ExtractAttention and Analyze (which read layers in tiles), a whole layer for the analyses
    # that need one.
    max_attention_elements: int = 256 * MIB
    max_activation_elements: int = 256 * MIB  # elements of the largest tensor of a pass
    default_chunk_bytes: int = 1 * MIB
    max_chunk_bytes: int = 4 * MIB - 64 * 1024  # stays under gRPC's default 4 MiB message cap
    min_chunk_bytes: int = 1024
    max_cached_models: int = 16
    max_parameters: int = 500_000_000  # a model over this is refused before it is built
    max_layers: int = MAX_LAYERS  # layers a network may expand to; the DSL's own default
    weights_dir: str | None = None  # where Weights.path names files; None: inline weights only
    max_weights_bytes: int = 2048 * MIB
    max_workers: int = 8  # calls at work at once; beyond, RESOURCE_EXHAUSTED with a retry hint
    # A stream waiting on its client (a response not read, a request not sent) this long is
    # cancelled, freeing its worker; server work never counts. 0: never.
    stream_idle_ms: int = 60_000
    auth_token: str | None = None  # when set, calls need "authorization: Bearer <token>"
    tls_cert: str | None = None  # PEM certificate chain; with tls_key the server speaks TLS only
    tls_key: str | None = None  # PEM private key of tls_cert
    tls_client_ca: str | None = None  # PEM CA bundle: clients must present a cert it signed (mTLS)
    # Connections are closed (GOAWAY) after this long so clients re-resolve and rebalance; the
    # calls on them finish first. 0: never.
    max_connection_age_ms: int = 300_000
    # Bytes of models the cache keeps (their float32 parameters; least recently used go first);
    # the default holds the largest model max_parameters allows.
    max_cache_bytes: int = 2048 * MIB
    # Heads one AnalyzeHeads, AblateHeads, ProfileHeads or CompareCheckpoints call reads (all
    # its layers together): each keeps per-head state and answers per head.
    max_analysis_heads: int = 1024
    # Heads one HeadSimilarity compares: its pairs and its n x n answer grow with the square
    # (BERT-large's 384 heads: 73,536 pairs, an answer of 1.9 MB).
    max_similarity_heads: int = 384
    # HeadSimilarity's work: pairs of heads x values per head (BERT-base, 512 tokens: 2.7e9).
    max_similarity_values: int = 4 * 1024**3
    # Attention values a call holds at once when it needs every layer together (HeadSimilarity;
    # CompareCheckpoints holds model a's while model b runs).
    max_held_attention_elements: int = 256 * MIB
    max_profile_items: int = 1_000_000  # samples (batch items) one ProfileHeads stream profiles
