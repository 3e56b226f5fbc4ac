"""Triton kernels for the decode path; imported only where Triton and a GPU (or its interpreter) exist."""
