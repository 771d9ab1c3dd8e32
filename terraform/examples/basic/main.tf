# A complete deployment of the KV server: one autoscaling group of enclave-enabled instances behind
# an internet-facing load balancer, with a KMS key that only the attested enclave can decrypt with.
# Order: build the bundle (packaging bundle) -> bake the AMI (packaging ami ..., writes the AMI id
# to an SSM parameter) -> terraform apply here.

module "kv" {
  source = "../../modules/kv-service"

  service_name = "kv-server"
  environment  = var.environment

  vpc_id                       = var.vpc_id
  private_subnet_ids           = var.private_subnet_ids
  load_balancer_subnet_ids     = var.public_subnet_ids
  https_egress_cidr_blocks     = [var.vpc_cidr_block]
  https_egress_prefix_list_ids = [var.s3_gateway_prefix_list_id]
  certificate_arn              = var.certificate_arn

  ami_ssm_parameter = var.ami_ssm_parameter
  instance_type     = "m5.xlarge"
  min_size          = 2
  max_size          = 4

  enclave_cpu_count  = 2
  enclave_memory_mib = 4096

  data_bucket_name   = var.data_bucket_name
  data_bucket_prefix = ""
  amp_workspace_id   = var.amp_workspace_id

  create_kms_key       = var.bundle_manifest_path != null
  bundle_manifest_path = var.bundle_manifest_path

  server_parameters = {
    "backup-poll-frequency-secs" = "300"
  }

  tags = {
    Project = "nitro-kv"
  }
}
