"""Code generators: `llvm` renders fused pointwise kernels for the CPU."""
