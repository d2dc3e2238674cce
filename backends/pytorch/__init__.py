"""The PyTorch backend: blocks (blocks, spatial, recurrent), catalogue, build, weights. Importing
this package loads no framework; `build` does."""

import os

# Before torch loads: its CPU allocator asks for transparent huge pages on tensors of 2 MiB and
# more. An attention layer is a fresh tensor of tens to hundreds of MiB, and faulting it in 4 KiB
# pages cost a third of the pass (4 x 8 x 1,024², 2 cores: 98 -> 67 ms). A torch loaded earlier
# by the caller keeps its own setting; so does a caller who set the variable.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
