"""fedc: a compiler and toolchain for federated learning on WebAssembly."""

__version__ = "0.1.0"
