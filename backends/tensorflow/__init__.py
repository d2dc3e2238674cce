"""The TensorFlow (Keras 3) backend: blocks, catalogue, build, weights. Importing this package
loads no framework; `build` does."""
