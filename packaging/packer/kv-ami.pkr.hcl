# Builder-instance bake the Packer way: boot Amazon Linux 2023 on an enclave-capable type, copy the
# bundle, run install-bundle.sh (checks every SHA-256 against manifest.json and installs), create
# the AMI, copy it to ami_regions, share with ami_users. docs/ami.md compares it with kv-ami.
#
#   packer init .   # Packer >= 1.7 (plugins.pkr.hcl)
#   packer build -var bundle_dir=dist/aws -var content_key=$(sha256sum dist/aws/manifest.json | cut -d' ' -f1) \
#     -var 'ami_regions=["eu-west-1"]' -var 'ami_users=["111122223333"]' .

variable "region" {
  type    = string
  default = "us-east-1"
}

variable "bundle_dir" {
  type        = string
  description = "kv-packager bundle output (contains manifest.json)"
  default     = "dist/aws"
}

# Required: install-bundle.sh refuses a manifest.json whose SHA-256 is not this, so what reaches
# the builder is the bundle the operator named (as kv-ami bake passes it in its user data).
variable "content_key" {
  type        = string
  description = "sha256sum of the bundle's manifest.json (the same key kv-ami tags with)"
  validation {
    # trim, not regex: Packer 1.6.6 (the offline validate test) has no regex function.
    condition     = length(var.content_key) == 64 && trim(var.content_key, "0123456789abcdef") == ""
    error_message = "The content_key must be the SHA-256 of the bundle's manifest.json: 64 lower-case hex digits (sha256sum manifest.json)."
  }
}

variable "envoy_image" {
  type        = string
  description = "Envoy image pre-pulled on the builder, pinned by digest (NAME@sha256:...); empty: none"
  default     = ""
}

variable "instance_type" {
  type        = string
  description = "Must support Nitro Enclaves (at least 4 vCPUs)"
  default     = "m6i.xlarge"
}

variable "ami_regions" {
  type    = list(string)
  default = []
}

variable "ami_users" {
  type    = list(string)
  default = []
}

variable "kms_key_id" {
  type        = string
  description = "KMS key for the encrypted boot volume in the build region (empty: the AWS managed key)"
  default     = ""
}

variable "region_kms_key_ids" {
  type        = map(string)
  description = "Per target region KMS key for the copies (encrypted AMIs need one per region)"
  default     = {}
}

locals {
  ami_name = "kv-server-${substr(var.content_key, 0, 12)}-{{timestamp}}"
  # Set while creating (TagSpecifications): on the key pair, security group, instance, network
  # interface and volumes, and on CreateImage's image and snapshots, whose copies inherit them
  # (CopyImageTags). iam-policy.json lets Packer change and delete only what carries
  # kv-ami:role = packer-builder, and set that tag only while creating.
  run_tags = {
    "kv-ami:role"        = "packer-builder"
    "kv-ami:content-key" = var.content_key
  }
  # Added afterwards to every AMI and its snapshots: iam-policy.json allows these two keys only.
  tags = {
    service  = "kv"
    built_by = "packer"
  }
}

source "amazon-ebs" "kv" {
  region        = var.region
  instance_type = var.instance_type
  ami_name      = local.ami_name
  ami_regions   = var.ami_regions
  ami_users     = var.ami_users

  source_ami_filter {
    filters = {
      name                = "al2023-ami-2023.*-x86_64"
      architecture        = "x86_64"
      root-device-type    = "ebs"
      virtualization-type = "hvm"
    }
    owners      = ["amazon"]
    most_recent = true
  }

  ssh_username = "ec2-user"

  encrypt_boot       = true
  kms_key_id         = var.kms_key_id
  region_kms_key_ids = var.region_kms_key_ids

  ena_support = true

  launch_block_device_mappings {
    device_name           = "/dev/xvda"
    volume_size           = 16
    volume_type           = "gp3"
    iops                  = 3000
    throughput            = 125
    delete_on_termination = true
  }

  # IMDSv2 on the builder and `imds_support = "v2.0"` on the AMI need the amazon plugin >= 1.0
  # (metadata_options, imds_support); Debian's Packer 1.6.6 used by the offline validate test
  # rejects both, so the AMI's IMDSv2 default is set by kv-ami's RegisterImage path only.

  run_tags        = local.run_tags
  run_volume_tags = local.run_tags
  tags            = local.tags
}

build {
  sources = ["source.amazon-ebs.kv"]

  # The bundle goes to a directory only the SSH user can read, made here (mkdir fails if it
  # exists), not to the world-writable temporary directory; it is removed before the image is
  # taken.
  provisioner "shell" {
    inline = ["mkdir -m 0700 /home/ec2-user/kv-ami /home/ec2-user/kv-ami/bundle"]
  }

  provisioner "file" {
    source      = "${var.bundle_dir}/"
    destination = "/home/ec2-user/kv-ami/bundle/"
  }

  # install-bundle.sh refuses a manifest.json other than the content key's, copies the bundle
  # into its own mktemp -d before checking it, and installs that copy.
  provisioner "shell" {
    script           = "${path.root}/install-bundle.sh"
    remote_folder    = "/home/ec2-user/kv-ami"
    environment_vars = ["KV_CONTENT_KEY=${var.content_key}", "KV_ENVOY_IMAGE=${var.envoy_image}"]
    execute_command  = "chmod +x {{ .Path }}; sudo {{ .Vars }} {{ .Path }} /home/ec2-user/kv-ami/bundle"
  }

  provisioner "shell" {
    inline = ["rm -rf /home/ec2-user/kv-ami"]
  }

  post-processor "manifest" {
    output     = "packer-manifest.json"
    strip_path = true
    custom_data = {
      content_key = var.content_key
    }
  }
}
