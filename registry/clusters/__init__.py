"""MBC: clustering a library of adapters, the stored runs, and the cluster adapters built from them."""
