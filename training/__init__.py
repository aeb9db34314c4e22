"""netvlad-kit training: NetVLAD in PyTorch, weakly supervised, with PCA-whitening and recall@N evaluation."""
