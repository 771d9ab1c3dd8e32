# Inputs of the kv-service module. Every value that ends up in the instance-init launcher is
# validated here, so a bad value fails at plan time with a message instead of at boot.

# --- identity ---------------------------------------------------------------------------------

variable "service_name" {
  description = "Service name; prefix of every resource name and of the SSM parameters (<service>-<environment>-<name>)."
  type        = string
  default     = "kv-server"

  validation {
    # 16 + 1 + 10 + 5 (e.g. "-grpc") = 32, the longest name a load balancer or target group takes.
    condition     = can(regex("^[a-z][a-z0-9-]{0,14}[a-z0-9]$", var.service_name))
    error_message = "service_name must be 2-16 characters of a-z, 0-9 and '-', starting with a letter and not ending with '-'."
  }
}

variable "environment" {
  description = "Environment name (demo, staging, prod, ...); second part of every resource name."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?$", var.environment))
    error_message = "environment must be 1-10 characters of a-z, 0-9 and '-', not starting or ending with '-'."
  }
}

variable "tags" {
  description = "Tags added to every resource that takes tags (the module adds Service and Environment)."
  type        = map(string)
  default     = {}
}

# --- network ----------------------------------------------------------------------------------

variable "vpc_id" {
  description = "VPC of the instances and the load balancer."
  type        = string

  validation {
    condition     = can(regex("^vpc-[0-9a-f]{8,17}$", var.vpc_id))
    error_message = "vpc_id must look like vpc-0123456789abcdef0."
  }
}

variable "private_subnet_ids" {
  description = "Private subnets the autoscaling group spreads the instances over (one per availability zone)."
  type        = list(string)

  validation {
    condition     = length(var.private_subnet_ids) > 0 && alltrue([for s in var.private_subnet_ids : can(regex("^subnet-[0-9a-f]{8,17}$", s))])
    error_message = "private_subnet_ids must hold at least one id like subnet-0123456789abcdef0."
  }
}

variable "load_balancer_subnet_ids" {
  description = "Subnets of the load balancer (public subnets for an internet-facing one); at least two zones. Needed when create_load_balancer is true."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for s in var.load_balancer_subnet_ids : can(regex("^subnet-[0-9a-f]{8,17}$", s))])
    error_message = "load_balancer_subnet_ids must be ids like subnet-0123456789abcdef0."
  }
}

variable "https_egress_prefix_list_ids" {
  description = "Managed prefix lists the instances may reach on TCP 443: the VPC endpoints' lists (e.g. the S3 gateway endpoint's pl-...)."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for p in var.https_egress_prefix_list_ids : can(regex("^pl-[0-9a-f]{8,17}$", p))])
    error_message = "https_egress_prefix_list_ids must be ids like pl-0123456789abcdef0."
  }
}

variable "https_egress_cidr_blocks" {
  description = "IPv4 CIDR blocks the instances may reach on TCP 443: the VPC CIDR for interface endpoints (SSM, KMS, CloudWatch, X-Ray, AMP, autoscaling), or 0.0.0.0/0 behind a NAT gateway when the VPC has none."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for c in var.https_egress_cidr_blocks : can(cidrnetmask(c))])
    error_message = "https_egress_cidr_blocks must be IPv4 CIDR blocks such as 10.0.0.0/16."
  }
}

variable "ingress_security_group_ids" {
  description = "Security groups (of a load balancer this module does not create) allowed to reach envoy on port 51052. With create_load_balancer the module's own load balancer is always allowed."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for g in var.ingress_security_group_ids : can(regex("^sg-[0-9a-f]{8,17}$", g))])
    error_message = "ingress_security_group_ids must be ids like sg-0123456789abcdef0."
  }
}

# --- instances --------------------------------------------------------------------------------

variable "ami_id" {
  description = "AMI of the instances. Set this or ami_ssm_parameter, not both."
  type        = string
  default     = null

  validation {
    condition     = var.ami_id == null || can(regex("^ami-[0-9a-f]{8,17}$", var.ami_id))
    error_message = "ami_id must look like ami-0123456789abcdef0."
  }
}

variable "ami_ssm_parameter" {
  description = "Name of the SSM parameter (data type aws:ec2:image) that the AMI packager writes with the AMI id of this region. Set this or ami_id, not both."
  type        = string
  default     = null

  validation {
    condition     = var.ami_ssm_parameter == null || can(regex("^/?[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$", var.ami_ssm_parameter))
    error_message = "ami_ssm_parameter must be an SSM parameter name (letters, digits, _ . - and / between parts)."
  }
}

variable "instance_type" {
  description = "EC2 instance type; must support Nitro Enclaves and have more vCPUs than enclave_cpu_count."
  type        = string
  default     = "m5.xlarge"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]*\\.[a-z0-9]+$", var.instance_type))
    error_message = "instance_type must look like m5.xlarge."
  }
}

variable "root_volume_size_gib" {
  description = "Size of the encrypted gp3 root volume in GiB."
  type        = number
  default     = 30

  validation {
    condition     = var.root_volume_size_gib >= 8 && var.root_volume_size_gib <= 16384 && floor(var.root_volume_size_gib) == var.root_volume_size_gib
    error_message = "root_volume_size_gib must be a whole number from 8 to 16384."
  }
}

variable "root_device_name" {
  description = "Device name of the AMI's root volume (/dev/xvda on Amazon Linux 2023)."
  type        = string
  default     = "/dev/xvda"

  validation {
    condition     = can(regex("^/dev/[a-z0-9]+$", var.root_device_name))
    error_message = "root_device_name must look like /dev/xvda."
  }
}

variable "root_volume_kms_key_arn" {
  description = "KMS key for the root volume; null uses the account's default EBS key."
  type        = string
  default     = null

  validation {
    condition     = var.root_volume_kms_key_arn == null || can(regex("^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/.+$", var.root_volume_kms_key_arn))
    error_message = "root_volume_kms_key_arn must be a KMS key ARN."
  }
}

# --- autoscaling ------------------------------------------------------------------------------

variable "min_size" {
  description = "Minimum number of instances."
  type        = number
  default     = 1

  validation {
    condition     = var.min_size >= 0 && floor(var.min_size) == var.min_size
    error_message = "min_size must be a whole number >= 0."
  }
}

variable "max_size" {
  description = "Maximum number of instances (must be >= min_size; leave room for instance refresh)."
  type        = number
  default     = 2

  validation {
    condition     = var.max_size >= 1 && floor(var.max_size) == var.max_size
    error_message = "max_size must be a whole number >= 1."
  }
}

variable "desired_capacity" {
  description = "Desired number of instances; null lets the group (or a scaling policy) decide, starting from min_size."
  type        = number
  default     = null

  validation {
    condition     = var.desired_capacity == null || try(var.desired_capacity >= 0 && floor(var.desired_capacity) == var.desired_capacity, false)
    error_message = "desired_capacity must be null or a whole number >= 0."
  }
}

variable "health_check_grace_period_seconds" {
  description = "Seconds after launch before the group acts on failed health checks; at least the launcher's worst case (envoy wait + readiness grace)."
  type        = number
  default     = 900

  validation {
    condition     = var.health_check_grace_period_seconds >= 60 && var.health_check_grace_period_seconds <= 7200
    error_message = "health_check_grace_period_seconds must be from 60 to 7200."
  }
}

variable "lifecycle_hook_timeout_seconds" {
  description = "Heartbeat timeout of the launch lifecycle hook; without an answer from the launcher the instance is abandoned after this long."
  type        = number
  default     = 900

  validation {
    condition     = var.lifecycle_hook_timeout_seconds >= 30 && var.lifecycle_hook_timeout_seconds <= 7200
    error_message = "lifecycle_hook_timeout_seconds must be from 30 to 7200."
  }
}

variable "instance_refresh_min_healthy_percentage" {
  description = "Share of capacity kept in service while an instance refresh replaces instances after a launch-template change."
  type        = number
  default     = 90

  validation {
    condition     = var.instance_refresh_min_healthy_percentage >= 0 && var.instance_refresh_min_healthy_percentage <= 100
    error_message = "instance_refresh_min_healthy_percentage must be from 0 to 100."
  }
}

# --- the launcher (instance-init) -------------------------------------------------------------

variable "enclave_cpu_count" {
  description = "vCPUs given to the enclave (allocator cpu_count and nitro-cli --cpu-count); even, because the allocator takes whole cores."
  type        = number
  default     = 2

  validation {
    condition     = var.enclave_cpu_count >= 2 && var.enclave_cpu_count <= 128 && var.enclave_cpu_count % 2 == 0
    error_message = "enclave_cpu_count must be an even number from 2 to 128."
  }
}

variable "enclave_memory_mib" {
  description = "Memory of the enclave in MiB (allocator memory_mib and nitro-cli --memory); it must hold the EIF's ramdisks and the data set."
  type        = number
  default     = 4096

  validation {
    condition     = var.enclave_memory_mib >= 256 && var.enclave_memory_mib <= 1048576 && floor(var.enclave_memory_mib) == var.enclave_memory_mib
    error_message = "enclave_memory_mib must be a whole number from 256 to 1048576."
  }
}

variable "enclave_debug_mode" {
  description = "Run the enclave in debug mode (console readable, PCRs all zero: a KMS key bound to PCRs will refuse it). Never in production."
  type        = bool
  default     = false
}

variable "enclave_cid" {
  description = "vsock CID of the enclave; the proxy's ingress dials this CID."
  type        = number
  default     = 16

  validation {
    condition     = var.enclave_cid >= 4 && var.enclave_cid <= 4294967294 && floor(var.enclave_cid) == var.enclave_cid
    error_message = "enclave_cid must be a whole number from 4 to 4294967294 (0-3 are reserved)."
  }
}

variable "launcher_paths" {
  description = "Paths on the AMI the launcher uses: the bundle directory, the enclave image, envoy's config directory, the collector's config (installed with $REGION/$WORKSPACE_ID placeholders, filled at boot), and the enclave unit's environment file."
  type = object({
    bundle_dir       = optional(string, "/opt/privacysandbox")
    eif              = optional(string, "/opt/privacysandbox/server_enclave_image.eif")
    envoy_config_dir = optional(string, "/etc/envoy")
    collector_config = optional(string, "/opt/aws/aws-otel-collector/etc/otel_collector_config.yaml")
    enclave_env_file = optional(string, "/etc/nitro-enclave/enclave.env")
  })
  default = {}

  validation {
    condition     = alltrue([for p in values(var.launcher_paths) : can(regex("^(/[A-Za-z0-9_.@+-]+)+$", p)) && !can(regex("/\\.\\.?(/|$)", p))])
    error_message = "launcher_paths must be absolute paths of letters, digits and _ . @ + - (no '.' or '..' parts, no spaces or quotes)."
  }
}

variable "systemd_units" {
  description = "Names of the systemd units the launcher starts: envoy, the OTEL collector, the Nitro Enclaves allocator, vsockproxy and the enclave supervisor."
  type = object({
    envoy      = optional(string, "envoy.service")
    collector  = optional(string, "aws-otel-collector.service")
    allocator  = optional(string, "nitro-enclaves-allocator.service")
    vsockproxy = optional(string, "vsockproxy.service")
    enclave    = optional(string, "nitro-enclave.service")
  })
  default = {}

  validation {
    condition     = alltrue([for u in values(var.systemd_units) : can(regex("^[A-Za-z0-9:_.@-]+\\.service$", u))])
    error_message = "systemd_units must be unit names like envoy.service (letters, digits, : _ . @ -)."
  }
}

variable "envoy_admin_port" {
  description = "Port of envoy's admin on 127.0.0.1; the launcher waits for its /ready."
  type        = number
  default     = 9902

  validation {
    condition     = var.envoy_admin_port >= 1 && var.envoy_admin_port <= 65535 && floor(var.envoy_admin_port) == var.envoy_admin_port
    error_message = "envoy_admin_port must be a port number from 1 to 65535."
  }
}

variable "proxy_admin_port" {
  description = "Port of vsockproxy's admin HTTP listener on 127.0.0.1; the launcher waits for its /readyz."
  type        = number
  default     = 9901

  validation {
    condition     = var.proxy_admin_port >= 1 && var.proxy_admin_port <= 65535 && floor(var.proxy_admin_port) == var.proxy_admin_port
    error_message = "proxy_admin_port must be a port number from 1 to 65535."
  }
}

variable "envoy_ready_timeout_seconds" {
  description = "How long the launcher waits for envoy's admin to answer before it gives up (and abandons the launch)."
  type        = number
  default     = 60

  validation {
    condition     = var.envoy_ready_timeout_seconds >= 5 && var.envoy_ready_timeout_seconds <= 600 && floor(var.envoy_ready_timeout_seconds) == var.envoy_ready_timeout_seconds
    error_message = "envoy_ready_timeout_seconds must be a whole number from 5 to 600."
  }
}

variable "readiness_grace_seconds" {
  description = "How long the launcher waits for the proxy's /readyz (enclave up) and then the KV server's health through envoy (SERVING: data loaded) before it abandons the launch."
  type        = number
  default     = 600

  validation {
    condition     = var.readiness_grace_seconds >= 10 && var.readiness_grace_seconds <= 3600 && floor(var.readiness_grace_seconds) == var.readiness_grace_seconds
    error_message = "readiness_grace_seconds must be a whole number from 10 to 3600."
  }
}

variable "unit_start_timeout_seconds" {
  description = "Upper bound for each systemctl start/restart/stop the launcher runs; above the units' own TimeoutStartSec (nitro-enclave.service allows 300 s for a large image to boot)."
  type        = number
  default     = 330

  validation {
    condition     = var.unit_start_timeout_seconds >= 5 && var.unit_start_timeout_seconds <= 900 && floor(var.unit_start_timeout_seconds) == var.unit_start_timeout_seconds
    error_message = "unit_start_timeout_seconds must be a whole number from 5 to 900."
  }
}

# --- data, settings, observability ------------------------------------------------------------

variable "data_bucket_name" {
  description = "S3 bucket holding the SNAPSHOT_/DELTA_ data files; the instance role may read it (under data_bucket_prefix)."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.data_bucket_name))
    error_message = "data_bucket_name must be an S3 bucket name (3-63 characters of a-z, 0-9, '.' and '-')."
  }
}

variable "data_bucket_prefix" {
  description = "Key prefix of the data files in the bucket (e.g. \"kv/\"); empty for the whole bucket."
  type        = string
  default     = ""

  validation {
    condition     = can(regex("^([A-Za-z0-9!_.()-]+/)*$", var.data_bucket_prefix))
    error_message = "data_bucket_prefix must be empty or folder names ending in '/' (letters, digits and ! _ . ( ) -), without a leading '/'."
  }
}

variable "server_parameters" {
  description = "Settings of the KV server, written as SSM String parameters named <service>-<environment>-<name> (the server reads them at start, e.g. backup-poll-frequency-secs, region). data-bucket-id and data-prefix are added from data_bucket_name/data_bucket_prefix unless given here."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for k, v in var.server_parameters : can(regex("^[a-z0-9][a-z0-9-]{0,62}$", k)) && length(v) > 0 && length(v) <= 4096])
    error_message = "server_parameters keys must be 1-63 characters of a-z, 0-9 and '-'; values must be 1-4096 characters (SSM has no empty values)."
  }
}

variable "amp_workspace_id" {
  description = "Amazon Managed Prometheus workspace the collector writes to (fills $WORKSPACE_ID); empty for none (no aps:RemoteWrite permission then)."
  type        = string
  default     = ""

  validation {
    condition     = can(regex("^(ws-[A-Za-z0-9-]{1,64})?$", var.amp_workspace_id))
    error_message = "amp_workspace_id must be empty or look like ws-12345678-abcd-1234-abcd-123456789012."
  }
}

variable "metrics_namespace" {
  description = "CloudWatch namespace of the collector's EMF metrics; the instance role may put metrics only into it."
  type        = string
  default     = "KV-Server"

  validation {
    condition     = can(regex("^[A-Za-z0-9._/#:-]{1,255}$", var.metrics_namespace)) && !startswith(var.metrics_namespace, "AWS/")
    error_message = "metrics_namespace must be 1-255 characters of letters, digits and . _ / # : - and must not start with AWS/."
  }
}

variable "log_group_name" {
  description = "CloudWatch log group of the collector's EMF metrics; null means /aws/<service>/metrics, the log_group_name of collector/otel_collector_config.yaml. The instance role may write only there."
  type        = string
  default     = null

  validation {
    condition     = var.log_group_name == null || can(regex("^[A-Za-z0-9_./#-]{1,512}$", var.log_group_name))
    error_message = "log_group_name must be 1-512 characters of letters, digits and _ . / # -."
  }
}

variable "app_log_group_name" {
  description = "CloudWatch log group of kv-server's OTLP logs (the collector's awscloudwatchlogs exporter); null means /aws/<service>/logs, the log_group_name of that exporter in collector/otel_collector_config.yaml. The instance role may write there and to log_group_name only."
  type        = string
  default     = null

  validation {
    condition     = var.app_log_group_name == null || can(regex("^[A-Za-z0-9_./#-]{1,512}$", var.app_log_group_name))
    error_message = "app_log_group_name must be 1-512 characters of letters, digits and _ . / # -."
  }
}

variable "create_log_group" {
  description = "Create the log groups (metrics and logs, with retention); false when another environment in the same account and region already created them."
  type        = bool
  default     = true
}

variable "log_retention_days" {
  description = "Retention of the service's CloudWatch log group (EMF metrics and logs from the collector)."
  type        = number
  default     = 365

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be one of the values CloudWatch Logs accepts (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653)."
  }
}

variable "log_kms_key_arn" {
  description = "KMS key that encrypts the log group; null keeps CloudWatch Logs' own encryption."
  type        = string
  default     = null

  validation {
    condition     = var.log_kms_key_arn == null || can(regex("^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/.+$", var.log_kms_key_arn))
    error_message = "log_kms_key_arn must be a KMS key ARN."
  }
}

# --- load balancer ----------------------------------------------------------------------------

variable "create_load_balancer" {
  description = "Create an application load balancer (listeners 443 and 8443, HTTP/1.1, HTTP/2 and gRPC target groups on port 51052)."
  type        = bool
  default     = true
}

variable "load_balancer_internal" {
  description = "Make the load balancer internal instead of internet-facing."
  type        = bool
  default     = false
}

variable "certificate_arn" {
  description = "ACM certificate of the load balancer's TLS listeners; required with create_load_balancer."
  type        = string
  default     = null

  validation {
    condition     = var.certificate_arn == null || can(regex("^arn:aws[a-z-]*:acm:[a-z0-9-]+:[0-9]{12}:certificate/.+$", var.certificate_arn))
    error_message = "certificate_arn must be an ACM certificate ARN."
  }
}

variable "load_balancer_ingress_cidr_blocks" {
  description = "IPv4 CIDR blocks allowed to reach the load balancer on 443 and 8443."
  type        = list(string)
  default     = ["0.0.0.0/0"]

  validation {
    condition     = alltrue([for c in var.load_balancer_ingress_cidr_blocks : can(cidrnetmask(c))])
    error_message = "load_balancer_ingress_cidr_blocks must be IPv4 CIDR blocks."
  }
}

variable "load_balancer_ssl_policy" {
  description = "TLS policy of the listeners (TLS 1.2 minimum)."
  type        = string
  default     = "ELBSecurityPolicy-TLS13-1-2-2021-06"

  validation {
    condition     = can(regex("^ELBSecurityPolicy-(TLS13-1-[23]-|TLS-1-2-|FS-1-2-)", var.load_balancer_ssl_policy))
    error_message = "load_balancer_ssl_policy must be an ELBSecurityPolicy with TLS 1.2 or newer as its minimum."
  }
}

variable "load_balancer_deletion_protection" {
  description = "Protect the load balancer against deletion (turn off before destroying the stack)."
  type        = bool
  default     = true
}

variable "load_balancer_access_logs_bucket" {
  description = "S3 bucket for the load balancer's access logs; null disables them."
  type        = string
  default     = null

  validation {
    condition     = var.load_balancer_access_logs_bucket == null || can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.load_balancer_access_logs_bucket))
    error_message = "load_balancer_access_logs_bucket must be an S3 bucket name."
  }
}

variable "waf_web_acl_arn" {
  description = "WAFv2 web ACL to associate with the load balancer; null for none."
  type        = string
  default     = null

  validation {
    condition     = var.waf_web_acl_arn == null || can(regex("^arn:aws[a-z-]*:wafv2:[a-z0-9-]+:[0-9]{12}:regional/webacl/.+$", var.waf_web_acl_arn))
    error_message = "waf_web_acl_arn must be a regional WAFv2 web ACL ARN."
  }
}

# --- KMS bound to the enclave's measurements --------------------------------------------------

variable "create_kms_key" {
  description = "Create a KMS key whose policy lets the instance role Decrypt only with an attestation document of the enclave (kms:RecipientAttestation:PCR0, and PCR1/PCR2 when known)."
  type        = bool
  default     = false
}

variable "bundle_manifest_path" {
  description = "Path of the bundle's manifest.json (packaging bundle); its PCRs are used where kms_pcr0/1/2 are null. Read at plan time."
  type        = string
  default     = null
}

variable "kms_pcr0" {
  description = "PCR0 (96 hex digits) the enclave must attest to for kms:Decrypt; null takes it from bundle_manifest_path."
  type        = string
  default     = null

  validation {
    condition     = var.kms_pcr0 == null || can(regex("^[0-9a-fA-F]{96}$", var.kms_pcr0))
    error_message = "kms_pcr0 must be 96 hex digits (SHA-384)."
  }
}

variable "kms_pcr1" {
  description = "PCR1 (96 hex digits) required in addition to PCR0; null takes it from the manifest, if there."
  type        = string
  default     = null

  validation {
    condition     = var.kms_pcr1 == null || can(regex("^[0-9a-fA-F]{96}$", var.kms_pcr1))
    error_message = "kms_pcr1 must be 96 hex digits (SHA-384)."
  }
}

variable "kms_pcr2" {
  description = "PCR2 (96 hex digits) required in addition to PCR0; null takes it from the manifest, if there."
  type        = string
  default     = null

  validation {
    condition     = var.kms_pcr2 == null || can(regex("^[0-9a-fA-F]{96}$", var.kms_pcr2))
    error_message = "kms_pcr2 must be 96 hex digits (SHA-384)."
  }
}

variable "kms_admin_principal_arns" {
  description = "Principals that administer the KMS keys (the enclave key and the fleet key; management actions only, no Decrypt); empty means the account root, i.e. IAM policies of the account decide who administers."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for a in var.kms_admin_principal_arns : can(regex("^arn:aws[a-z-]*:iam::[0-9]{12}:(root|role/.+|user/.+)$", a))])
    error_message = "kms_admin_principal_arns must be IAM role, user or account-root ARNs."
  }
}

variable "kms_encrypt_principal_arns" {
  description = "Principals that may Encrypt/GenerateDataKey with the key (whoever prepares secrets for the enclave)."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for a in var.kms_encrypt_principal_arns : can(regex("^arn:aws[a-z-]*:iam::[0-9]{12}:(root|role/.+|user/.+)$", a))])
    error_message = "kms_encrypt_principal_arns must be IAM role, user or account-root ARNs."
  }
}

# --- fleet keys (one HPKE key set for every enclave of the group) ------------------------------

variable "enable_fleet_keys" {
  description = "Create the fleet key set's KMS key (Decrypt/GenerateDataKey only for attested enclaves of the accepted images), let the instance role read and write the key set object, and write the fleet-keys-s3-uri SSM parameter (the KMS key is named in the enclave image's config, never in SSM: output fleet_keys_kms_alias_arn)."
  type        = bool
  default     = false
}

variable "fleet_key_pcr_sets" {
  description = "Accepted enclave images for the fleet key: one {PCR0, PCR1, PCR2} object (96 hex digits each) per image; during a rollover, the running image's and the new one's. Added to the sets of fleet_key_manifest_paths; 1 to 4 sets in all."
  type = list(object({
    PCR0 = string
    PCR1 = string
    PCR2 = string
  }))
  default = []

  validation {
    condition     = alltrue([for s in var.fleet_key_pcr_sets : alltrue([for v in [s.PCR0, s.PCR1, s.PCR2] : can(regex("^[0-9a-fA-F]{96}$", v))])])
    error_message = "Every PCR0, PCR1 and PCR2 in fleet_key_pcr_sets must be 96 hex digits (SHA-384)."
  }
  validation {
    condition     = length(var.fleet_key_pcr_sets) <= 4
    error_message = "fleet_key_pcr_sets takes at most 4 sets (images); remove the sets of images no instance runs any more."
  }
}

variable "fleet_key_manifest_paths" {
  description = "Paths of bundle manifest.json files (packaging bundle) whose PCR0/1/2 are accepted for the fleet key, one image each; read at plan time."
  type        = list(string)
  default     = []

  validation {
    condition     = length(var.fleet_key_manifest_paths) <= 4
    error_message = "fleet_key_manifest_paths takes at most 4 manifests (images)."
  }
}

variable "fleet_keys_s3_bucket" {
  description = "Bucket of the fleet key set object; null means data_bucket_name."
  type        = string
  default     = null

  validation {
    condition     = var.fleet_keys_s3_bucket == null || can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.fleet_keys_s3_bucket))
    error_message = "fleet_keys_s3_bucket must be an S3 bucket name (3-63 characters of a-z, 0-9, '.' and '-')."
  }
}

variable "fleet_keys_s3_key" {
  description = "Key of the fleet key set object; null means <data_bucket_prefix>fleet-keys/keyset.json. The instance role may get and put exactly this object."
  type        = string
  default     = null

  validation {
    condition     = var.fleet_keys_s3_key == null || can(regex("^([A-Za-z0-9!_.()-]+/)*[A-Za-z0-9!_.()-]+$", var.fleet_keys_s3_key))
    error_message = "fleet_keys_s3_key must be an object key of folder names and a file name (letters, digits and ! _ . ( ) -), without a leading or trailing '/' and without '*'."
  }
}
