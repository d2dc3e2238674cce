"""The PyTorch backend: blocks (blocks, spatial, recurrent), catalogue, build, weights. Importing
this package loads no framework; `build` does."""
