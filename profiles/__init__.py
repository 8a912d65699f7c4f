"""On-device profiling: partition models into sequential subgraphs, deploy precisions with
real kernels, time them, and fill the hwcost store."""
