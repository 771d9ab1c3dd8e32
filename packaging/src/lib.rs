//! packaging: the enclave image (EIF), its PCRs and the AMI bundle.
