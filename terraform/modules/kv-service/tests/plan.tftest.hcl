# `terraform test` of the module: plans only, with the real aws provider (never applied, no AWS
# call: fake static credentials, account lookups skipped, the two data sources that would call
# AWS overridden). terraform/tests/run.sh runs it when the aws provider is installed on the
# machine (it cannot be downloaded here).

provider "aws" {
  region                      = "eu-west-1"
  access_key                  = "test-not-a-key"
  secret_key                  = "test-not-a-secret"
  skip_credentials_validation = true
  skip_requesting_account_id  = true
  skip_metadata_api_check     = true
  skip_region_validation      = true
}

override_data {
  target = data.aws_caller_identity.current
  values = {
    account_id = "123456789012"
    arn        = "arn:aws:iam::123456789012:user/test"
    user_id    = "AIDATESTTESTTESTTEST"
  }
}

override_data {
  target = data.aws_ssm_parameter.ami
  values = {
    value          = "ami-0fedcba9876543210"
    insecure_value = "ami-0fedcba9876543210"
  }
}

variables {
  environment              = "demo"
  vpc_id                   = "vpc-0123456789abcdef0"
  private_subnet_ids       = ["subnet-0123456789abcdef0", "subnet-0123456789abcdef1"]
  load_balancer_subnet_ids = ["subnet-0123456789abcdef2", "subnet-0123456789abcdef3"]
  data_bucket_name         = "example-kv-data"
  data_bucket_prefix       = "kv/"
  ami_id                   = "ami-0123456789abcdef0"
  certificate_arn          = "arn:aws:acm:eu-west-1:123456789012:certificate/00000000-0000-0000-0000-000000000000"
  amp_workspace_id         = "ws-00000000-0000-0000-0000-000000000000"
  https_egress_cidr_blocks = ["10.0.0.0/16"]
  server_parameters = {
    "backup-poll-frequency-secs" = "300"
  }
}

run "launch_template_and_group" {
  command = plan

  assert {
    condition     = aws_launch_template.this.enclave_options[0].enabled == true
    error_message = "enclaves must be enabled in the launch template"
  }
  assert {
    condition = (aws_launch_template.this.metadata_options[0].http_tokens == "required"
      && aws_launch_template.this.metadata_options[0].http_put_response_hop_limit == 1
    && aws_launch_template.this.metadata_options[0].instance_metadata_tags == "enabled")
    error_message = "IMDSv2 required, hop limit 1 and metadata tags expected"
  }
  assert {
    condition = (aws_launch_template.this.block_device_mappings[0].ebs[0].volume_type == "gp3"
    && aws_launch_template.this.block_device_mappings[0].ebs[0].encrypted == "true")
    error_message = "the root volume must be encrypted gp3"
  }
  assert {
    condition     = aws_launch_template.this.image_id == "ami-0123456789abcdef0"
    error_message = "ami_id must become the image id"
  }
  assert {
    condition     = aws_launch_template.this.user_data == base64encode(output.instance_init_script)
    error_message = "user data must be the rendered launcher"
  }
  assert {
    condition     = strcontains(output.instance_init_script, "readonly ASG_NAME='kv-server-demo'") && strcontains(output.instance_init_script, "readonly LIFECYCLE_HOOK_NAME='kv-server-demo-launch'")
    error_message = "the launcher must name the group and the hook it completes"
  }
  assert {
    condition     = aws_autoscaling_group.this.health_check_type == "ELB" && aws_autoscaling_group.this.health_check_grace_period == 900
    error_message = "ELB health checks with the grace period expected"
  }
  assert {
    condition     = one([for h in aws_autoscaling_group.this.initial_lifecycle_hook : h.lifecycle_transition if h.default_result == "ABANDON" && h.name == "kv-server-demo-launch"]) == "autoscaling:EC2_INSTANCE_LAUNCHING"
    error_message = "a launch lifecycle hook defaulting to ABANDON expected"
  }
  assert {
    condition     = aws_autoscaling_group.this.instance_refresh[0].strategy == "Rolling"
    error_message = "instance refresh on launch template change expected"
  }
  assert {
    condition     = toset(aws_autoscaling_group.this.vpc_zone_identifier) == toset(["subnet-0123456789abcdef0", "subnet-0123456789abcdef1"])
    error_message = "the group must span the private subnets"
  }
}

run "load_balancer_and_security_groups" {
  command = plan

  assert {
    condition     = toset([for tg in aws_lb_target_group.this : tg.protocol_version]) == toset(["HTTP1", "HTTP2", "GRPC"]) && alltrue([for tg in aws_lb_target_group.this : tg.port == 51052])
    error_message = "HTTP1, HTTP2 and GRPC target groups on port 51052 expected"
  }
  assert {
    condition     = aws_lb_target_group.this["grpc"].health_check[0].path == "/grpc.health.v1.Health/Check" && aws_lb_target_group.this["http1"].health_check[0].path == "/healthz" && aws_lb_target_group.this["http2"].health_check[0].path == "/healthz"
    error_message = "health checks on the gRPC health method and envoy's /healthz (503 while loading) expected"
  }
  assert {
    condition     = aws_lb_listener.https[0].port == 443 && aws_lb_listener.h2[0].port == 8443 && aws_lb_listener.https[0].protocol == "HTTPS"
    error_message = "TLS listeners on 443 and 8443 expected"
  }
  assert {
    condition     = aws_lb.this[0].drop_invalid_header_fields == true
    error_message = "the load balancer must drop invalid header fields"
  }
  assert {
    condition = (length(aws_vpc_security_group_ingress_rule.instance_from_lb) == 1
      && aws_vpc_security_group_ingress_rule.instance_from_lb[0].from_port == 51052
      && aws_vpc_security_group_ingress_rule.instance_from_lb[0].to_port == 51052
    && length(aws_vpc_security_group_ingress_rule.instance_from_groups) == 0)
    error_message = "only the load balancer may reach the instances, on 51052 only"
  }
  assert {
    condition     = alltrue([for r in aws_vpc_security_group_egress_rule.instance_https_cidrs : r.from_port == 443 && r.to_port == 443 && r.ip_protocol == "tcp"]) && length(aws_vpc_security_group_egress_rule.instance_https_cidrs) == 1
    error_message = "instance egress must be HTTPS to the given CIDRs only"
  }
}

run "iam_least_privilege" {
  command = plan

  assert {
    condition = alltrue([for s in jsondecode(data.aws_iam_policy_document.instance.json).Statement :
    alltrue([for a in flatten([s.Action]) : !strcontains(a, "*")])])
    error_message = "no wildcard actions in the instance policy"
  }
  assert {
    condition = toset([for s in jsondecode(data.aws_iam_policy_document.instance.json).Statement : s.Sid
    if contains(flatten([s.Resource]), "*")]) == toset(["PutServiceMetrics", "WriteTraces"])
    error_message = "Resource \"*\" only in the documented exceptions (PutServiceMetrics, WriteTraces)"
  }
  assert {
    condition = one([for s in jsondecode(data.aws_iam_policy_document.instance.json).Statement :
    s.Resource if s.Sid == "ReadDataFiles"]) == "arn:aws:s3:::example-kv-data/kv/*"
    error_message = "S3 read limited to the data prefix"
  }
  assert {
    condition = one([for s in jsondecode(data.aws_iam_policy_document.instance.json).Statement :
    s.Resource if s.Sid == "ReadServiceParameters"]) == "arn:aws:ssm:eu-west-1:123456789012:parameter/kv-server-demo-*"
    error_message = "SSM read limited to kv-server-demo-* parameters"
  }
  assert {
    condition = one([for s in jsondecode(data.aws_iam_policy_document.instance.json).Statement :
    s.Resource if s.Sid == "CompleteLaunchLifecycleHook"]) == "arn:aws:autoscaling:eu-west-1:123456789012:autoScalingGroup:*:autoScalingGroupName/kv-server-demo"
    error_message = "lifecycle completion limited to this group"
  }
  assert {
    condition = one([for s in jsondecode(data.aws_iam_policy_document.instance.json).Statement :
    s.Resource if s.Sid == "RemoteWriteMetrics"]) == "arn:aws:aps:eu-west-1:123456789012:workspace/ws-00000000-0000-0000-0000-000000000000"
    error_message = "AMP remote write limited to the workspace"
  }
  assert {
    condition = (toset(keys(aws_ssm_parameter.server)) == toset(["data-bucket-id", "data-prefix", "backup-poll-frequency-secs"])
      && aws_ssm_parameter.server["backup-poll-frequency-secs"].name == "kv-server-demo-backup-poll-frequency-secs"
    && aws_ssm_parameter.server["data-prefix"].value == "kv/")
    error_message = "SSM parameters named <service>-<env>-<name> expected"
  }
  assert {
    condition     = length(aws_kms_key.enclave) == 0
    error_message = "no KMS key unless asked for"
  }
}

run "kms_key_bound_to_manifest_pcrs" {
  command = plan

  variables {
    create_kms_key       = true
    bundle_manifest_path = "tests/fixtures/manifest.json"
  }

  assert {
    condition = one([for s in jsondecode(data.aws_iam_policy_document.kms[0].json).Statement : s.Condition if s.Sid == "DecryptOnlyInTheAttestedEnclave"]) == {
      StringEqualsIgnoreCase = {
        "kms:RecipientAttestation:PCR0" = jsondecode(file("tests/fixtures/manifest.json")).pcrs.PCR0
        "kms:RecipientAttestation:PCR1" = jsondecode(file("tests/fixtures/manifest.json")).pcrs.PCR1
        "kms:RecipientAttestation:PCR2" = jsondecode(file("tests/fixtures/manifest.json")).pcrs.PCR2
      }
    }
    error_message = "Decrypt must require PCR0, PCR1 and PCR2 of the manifest"
  }
  assert {
    condition     = length([for s in jsondecode(data.aws_iam_policy_document.kms[0].json).Statement : s if s.Effect == "Deny" && s.Action == "kms:Decrypt"]) == 3
    error_message = "a Deny of Decrypt without each PCR expected"
  }
  assert {
    condition = alltrue([for s in jsondecode(data.aws_iam_policy_document.kms[0].json).Statement :
    !contains(flatten([s.Action]), "kms:Decrypt") if s.Sid == "KeyAdministration"])
    error_message = "administrators must not decrypt"
  }
  assert {
    condition     = aws_kms_key.enclave[0].enable_key_rotation == true
    error_message = "key rotation expected"
  }
}

run "kms_key_explicit_pcr0_overrides_manifest" {
  command = plan

  variables {
    create_kms_key       = true
    bundle_manifest_path = "tests/fixtures/manifest.json"
    kms_pcr0             = "ABCDEF000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
  }

  assert {
    condition     = output.kms_key_pcrs["PCR0"] == "abcdef000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    error_message = "kms_pcr0 must win over the manifest (lower-cased)"
  }
}

run "ami_from_ssm_parameter_and_no_load_balancer" {
  command = plan

  variables {
    ami_id                     = null
    ami_ssm_parameter          = "/kv-server/demo/ami"
    create_load_balancer       = false
    ingress_security_group_ids = ["sg-0123456789abcdef0"]
  }

  assert {
    condition     = aws_launch_template.this.image_id == "ami-0fedcba9876543210"
    error_message = "the AMI must come from the SSM parameter"
  }
  assert {
    condition     = length(aws_lb.this) == 0 && length(aws_lb_target_group.this) == 0 && aws_autoscaling_group.this.health_check_type == "EC2"
    error_message = "no load balancer and EC2 health checks expected"
  }
  assert {
    condition     = aws_vpc_security_group_ingress_rule.instance_from_groups["sg-0123456789abcdef0"].from_port == 51052
    error_message = "the external load balancer's group must reach 51052"
  }
}

# --- fleet keys: PCR rollover -----------------------------------------------------------------
# The order an operator follows (README, "Fleet keys: PCR rollover"): the running image's set
# (here from the manifest) plus the new image's set, then, after the instance refresh, the new
# set alone. Each accepted image is one Allow statement with exactly its own three PCRs.

run "fleet_keys_during_a_rollover_accept_two_images" {
  command = plan

  variables {
    enable_fleet_keys        = true
    fleet_key_manifest_paths = ["tests/fixtures/manifest.json"]
    kms_admin_principal_arns = ["arn:aws:iam::123456789012:role/kv-key-admin"]
    fleet_key_pcr_sets = [{
      PCR0 = "580DDE35F4C25E7966308F1BA30854BA0D0DA51992B98BCB77D2B7FDB9360177509235CB61A58BA4B56DBDD7C634DB77"
      PCR1 = "07b21343b7dd64f161f718601180fff651746a28d82ac0286eaad38e0dcf5c4469a0e0b070ee30084e6d36d4ea6e07d2"
      PCR2 = "c55cb55c495617d2fd28c087dc3bdc9866e3b968a06387957d57000bb11de221b4a6c9b4993184e4da922bb5fbabaaeb"
    }]
  }

  assert {
    condition     = [for s in jsondecode(aws_kms_key.fleet[0].policy).Statement : s.Sid if s.Effect == "Allow" && contains(flatten([s.Action]), "kms:Decrypt")] == ["FleetKeySetForImage0", "FleetKeySetForImage1"]
    error_message = "one Allow statement per accepted image, the manifest's first"
  }
  assert {
    condition = [for s in jsondecode(aws_kms_key.fleet[0].policy).Statement : s.Condition if s.Effect == "Allow" && contains(flatten([s.Action]), "kms:Decrypt")] == [
      { StringEqualsIgnoreCase = {
        "kms:RecipientAttestation:PCR0" = jsondecode(file("tests/fixtures/manifest.json")).pcrs.PCR0
        "kms:RecipientAttestation:PCR1" = jsondecode(file("tests/fixtures/manifest.json")).pcrs.PCR1
        "kms:RecipientAttestation:PCR2" = jsondecode(file("tests/fixtures/manifest.json")).pcrs.PCR2
      } },
      { StringEqualsIgnoreCase = {
        "kms:RecipientAttestation:PCR0" = "580dde35f4c25e7966308f1ba30854ba0d0da51992b98bcb77d2b7fdb9360177509235cb61a58ba4b56dbdd7c634db77"
        "kms:RecipientAttestation:PCR1" = "07b21343b7dd64f161f718601180fff651746a28d82ac0286eaad38e0dcf5c4469a0e0b070ee30084e6d36d4ea6e07d2"
        "kms:RecipientAttestation:PCR2" = "c55cb55c495617d2fd28c087dc3bdc9866e3b968a06387957d57000bb11de221b4a6c9b4993184e4da922bb5fbabaaeb"
      } },
    ]
    error_message = "each Allow statement must require exactly its own image's PCR0, PCR1 and PCR2 (lower-cased), nothing else"
  }
  assert {
    condition = alltrue([for s in jsondecode(aws_kms_key.fleet[0].policy).Statement :
      toset(flatten([s.Action])) == toset(["kms:Decrypt", "kms:GenerateDataKey"]) && s.Principal == { AWS = "arn:aws:iam::123456789012:role/kv-server-demo-instance" }
    if startswith(s.Sid, "FleetKeySetForImage")])
    error_message = "the image statements grant Decrypt and GenerateDataKey to the instance role only"
  }
  assert {
    condition = [for s in jsondecode(aws_kms_key.fleet[0].policy).Statement : {
      Sid = s.Sid, Principal = s.Principal, Resource = s.Resource, Condition = s.Condition, Action = toset(s.Action)
      } if s.Effect == "Deny"] == [{
      Sid       = "DenyWithoutAttestation"
      Principal = { AWS = "*" }
      Resource  = "*"
      Condition = { Null = { "kms:RecipientAttestation:ImageSha384" = "true" } }
      Action = toset(["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey", "kms:GenerateDataKeyPair",
        "kms:GenerateDataKeyPairWithoutPlaintext", "kms:GenerateDataKeyWithoutPlaintext",
      "kms:ReEncryptFrom", "kms:ReEncryptTo"])
    }]
    error_message = "one Deny of every cryptographic action to everyone without an attestation document"
  }
  assert {
    condition = alltrue([for s in jsondecode(aws_kms_key.fleet[0].policy).Statement :
    !contains(flatten([s.Action]), "kms:Encrypt") && !anytrue([for a in flatten([s.Action]) : strcontains(a, "*")]) if s.Effect == "Allow"])
    error_message = "nobody may Encrypt, and no Allow has a wildcard action"
  }
  assert {
    condition = (length([for s in jsondecode(aws_kms_key.fleet[0].policy).Statement : s if strcontains(jsonencode(s.Principal), ":root")]) == 0
      && one([for s in jsondecode(aws_kms_key.fleet[0].policy).Statement : s.Principal if s.Sid == "KeyAdministration"]) == { AWS = "arn:aws:iam::123456789012:role/kv-key-admin" }
      && alltrue([for s in jsondecode(aws_kms_key.fleet[0].policy).Statement :
    length(setintersection(flatten([s.Action]), ["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey", "kms:ReEncryptFrom", "kms:ReEncryptTo"])) == 0 if s.Sid == "KeyAdministration"]))
    error_message = "administrators (named ones here) get management actions only; no statement names the account root"
  }
  assert {
    condition     = one([for s in jsondecode(data.aws_iam_policy_document.instance.json).Statement : s if s.Sid == "ReadWriteFleetKeySet"]) == { Sid = "ReadWriteFleetKeySet", Effect = "Allow", Action = ["s3:PutObject", "s3:GetObject"], Resource = "arn:aws:s3:::example-kv-data/kv/fleet-keys/keyset.json" }
    error_message = "the instance role may get and put exactly the key set object"
  }
  assert {
    condition = alltrue([for s in jsondecode(data.aws_iam_policy_document.instance.json).Statement :
    !anytrue([for a in flatten([s.Action]) : startswith(a, "kms:")])])
    error_message = "no KMS permission in the instance role's policy: the key policy decides"
  }
  assert {
    condition = (aws_ssm_parameter.server["fleet-keys-s3-uri"].name == "kv-server-demo-fleet-keys-s3-uri"
    && aws_ssm_parameter.server["fleet-keys-s3-uri"].value == "s3://example-kv-data/kv/fleet-keys/keyset.json")
    error_message = "the fleet-keys-s3-uri SSM parameter expected"
  }
  assert {
    condition     = length([for k in keys(aws_ssm_parameter.server) : k if strcontains(k, "kms")]) == 0
    error_message = "no SSM parameter names a KMS key: the enclave image's config names the fleet key"
  }
  assert {
    condition     = output.fleet_keys_kms_alias_arn == "arn:aws:kms:eu-west-1:123456789012:alias/kv-server-demo-fleet-keys"
    error_message = "the alias ARN the enclave image's config names, known at plan time"
  }
  assert {
    condition     = output.fleet_keys_s3_uri == "s3://example-kv-data/kv/fleet-keys/keyset.json" && length(output.fleet_key_pcr_sets) == 2
    error_message = "the S3 URI and both PCR sets as outputs"
  }
  assert {
    condition     = length(aws_kms_key.enclave) == 0 && aws_kms_alias.fleet[0].name == "alias/kv-server-demo-fleet-keys"
    error_message = "the fleet key is its own key, independent of create_kms_key"
  }
}

run "fleet_keys_after_the_refresh_accept_the_new_image_only" {
  command = plan

  variables {
    enable_fleet_keys = true
    fleet_key_pcr_sets = [{
      PCR0 = "580dde35f4c25e7966308f1ba30854ba0d0da51992b98bcb77d2b7fdb9360177509235cb61a58ba4b56dbdd7c634db77"
      PCR1 = "07b21343b7dd64f161f718601180fff651746a28d82ac0286eaad38e0dcf5c4469a0e0b070ee30084e6d36d4ea6e07d2"
      PCR2 = "c55cb55c495617d2fd28c087dc3bdc9866e3b968a06387957d57000bb11de221b4a6c9b4993184e4da922bb5fbabaaeb"
    }]
    fleet_keys_s3_bucket = "example-kv-keys"
    fleet_keys_s3_key    = "prod/keyset.json"
  }

  assert {
    condition = [for s in jsondecode(aws_kms_key.fleet[0].policy).Statement : s.Condition if s.Effect == "Allow" && contains(flatten([s.Action]), "kms:Decrypt")] == [
      { StringEqualsIgnoreCase = {
        "kms:RecipientAttestation:PCR0" = "580dde35f4c25e7966308f1ba30854ba0d0da51992b98bcb77d2b7fdb9360177509235cb61a58ba4b56dbdd7c634db77"
        "kms:RecipientAttestation:PCR1" = "07b21343b7dd64f161f718601180fff651746a28d82ac0286eaad38e0dcf5c4469a0e0b070ee30084e6d36d4ea6e07d2"
        "kms:RecipientAttestation:PCR2" = "c55cb55c495617d2fd28c087dc3bdc9866e3b968a06387957d57000bb11de221b4a6c9b4993184e4da922bb5fbabaaeb"
      } },
    ]
    error_message = "one Allow statement, the new image's"
  }
  assert {
    condition     = length([for s in jsondecode(aws_kms_key.fleet[0].policy).Statement : s if s.Effect == "Deny" && try(s.Condition, null) == { Null = { "kms:RecipientAttestation:ImageSha384" = "true" } }]) == 1
    error_message = "the deny without attestation stays"
  }
  assert {
    condition     = output.fleet_keys_s3_uri == "s3://example-kv-keys/prod/keyset.json" && one([for s in jsondecode(data.aws_iam_policy_document.instance.json).Statement : s.Resource if s.Sid == "ReadWriteFleetKeySet"]) == "arn:aws:s3:::example-kv-keys/prod/keyset.json"
    error_message = "a configured bucket and key become the URI and the role's only object"
  }
}

run "fleet_keys_same_image_twice_is_one_statement" {
  command = plan

  variables {
    enable_fleet_keys        = true
    fleet_key_manifest_paths = ["tests/fixtures/manifest.json"]
    fleet_key_pcr_sets = [{
      PCR0 = upper(jsondecode(file("tests/fixtures/manifest.json")).pcrs.PCR0)
      PCR1 = jsondecode(file("tests/fixtures/manifest.json")).pcrs.PCR1
      PCR2 = jsondecode(file("tests/fixtures/manifest.json")).pcrs.PCR2
    }]
  }

  assert {
    condition     = length([for s in jsondecode(aws_kms_key.fleet[0].policy).Statement : s if s.Effect == "Allow" && contains(flatten([s.Action]), "kms:Decrypt")]) == 1
    error_message = "the same image from a manifest and from fleet_key_pcr_sets (other case) is one statement"
  }
}

run "fleet_keys_off_by_default" {
  command = plan

  assert {
    condition     = length(aws_kms_key.fleet) == 0 && output.fleet_keys_s3_uri == null && output.fleet_keys_kms_alias_arn == null && !contains(keys(aws_ssm_parameter.server), "fleet-keys-s3-uri")
    error_message = "no fleet key, object access or parameters unless enable_fleet_keys"
  }
  assert {
    condition     = length([for s in jsondecode(data.aws_iam_policy_document.instance.json).Statement : s if s.Sid == "ReadWriteFleetKeySet"]) == 0
    error_message = "no write access to S3 unless enable_fleet_keys"
  }
}

# --- bad input fails at plan time with a message ------------------------------------------------

run "odd_enclave_cpu_count_is_refused" {
  command = plan
  variables {
    enclave_cpu_count = 3
  }
  expect_failures = [var.enclave_cpu_count]
}

run "path_with_a_quote_is_refused" {
  command = plan
  variables {
    launcher_paths = { eif = "/opt/privacysandbox/x'y.eif" }
  }
  expect_failures = [var.launcher_paths]
}

run "bad_unit_name_is_refused" {
  command = plan
  variables {
    systemd_units = { enclave = "nitro enclave" }
  }
  expect_failures = [var.systemd_units]
}

run "bad_pcr_is_refused" {
  command = plan
  variables {
    kms_pcr0 = "abc"
  }
  expect_failures = [var.kms_pcr0]
}

run "no_ami_is_refused" {
  command = plan
  variables {
    ami_id = null
  }
  expect_failures = [aws_launch_template.this]
}

run "hook_shorter_than_the_readiness_grace_is_refused" {
  command = plan
  variables {
    lifecycle_hook_timeout_seconds = 300
  }
  expect_failures = [aws_autoscaling_group.this]
}

run "kms_key_without_pcr0_is_refused" {
  command = plan
  variables {
    create_kms_key = true
  }
  expect_failures = [aws_kms_key.enclave]
}

run "kms_key_with_debug_mode_is_refused" {
  command = plan
  variables {
    create_kms_key     = true
    kms_pcr0           = "f9ef9e90faeaa081ecc89e9b42d9ae3cd66e614dbd6e291c26dcab57cf843f0da7aa6825174426a0ac5dfa566b718691"
    enclave_debug_mode = true
  }
  expect_failures = [aws_kms_key.enclave]
}

run "load_balancer_without_certificate_is_refused" {
  command = plan
  variables {
    certificate_arn = null
  }
  expect_failures = [aws_lb.this]
}

run "fleet_key_malformed_pcr_is_refused" {
  command = plan
  variables {
    enable_fleet_keys = true
    fleet_key_pcr_sets = [{
      PCR0 = "580dde35f4c25e7966308f1ba30854ba0d0da51992b98bcb77d2b7fdb9360177509235cb61a58ba4b56dbdd7c634db77"
      PCR1 = "07b21343b7dd64f161f718601180fff651746a28d82ac0286eaad38e0dcf5c4469a0e0b070ee30084e6d36d4ea6e07d2"
      PCR2 = "c55cb55c495617d2fd28c087dc3bdc9866e3b968a06387957d57000bb11de221b4a6c9b4993184e4da922bb5fbabaaeg"
    }]
  }
  expect_failures = [var.fleet_key_pcr_sets]
}

run "fleet_keys_without_an_image_are_refused" {
  command = plan
  variables {
    enable_fleet_keys = true
  }
  expect_failures = [aws_kms_key.fleet]
}

run "fleet_keys_with_a_manifest_without_pcrs_are_refused" {
  command = plan
  variables {
    enable_fleet_keys        = true
    fleet_key_manifest_paths = ["tests/fixtures/manifest-without-pcrs.json"]
  }
  expect_failures = [aws_kms_key.fleet]
}

run "fleet_keys_with_debug_mode_are_refused" {
  command = plan
  variables {
    enable_fleet_keys        = true
    fleet_key_manifest_paths = ["tests/fixtures/manifest.json"]
    enclave_debug_mode       = true
  }
  expect_failures = [aws_kms_key.fleet]
}

run "five_fleet_key_pcr_sets_are_refused" {
  command = plan
  variables {
    enable_fleet_keys  = true
    fleet_key_pcr_sets = [for i in range(5) : { PCR0 = format("%096d", i), PCR1 = format("%096d", i), PCR2 = format("%096d", i) }]
  }
  expect_failures = [var.fleet_key_pcr_sets]
}
