"""Sources of 2D slices: medical volumes (NIfTI, nnU-Net, MSD), PNG folders, and the phantom."""
