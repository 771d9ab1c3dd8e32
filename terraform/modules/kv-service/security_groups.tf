# Who may talk to whom.
#  - The load balancer takes 443/8443 from load_balancer_ingress_cidr_blocks and talks only to the
#    instances on envoy's port 51052.
#  - The instances take 51052 from the load balancer (and ingress_security_group_ids) and nothing
#    else: no SSH (use SSM Session Manager if needed), no admin ports (envoy 9902, vsockproxy admin,
#    collector all listen on 127.0.0.1).
#  - The instances send only HTTPS (443) to what the proxy policy allows the enclave and what the
#    parent's own agents need: S3, SSM, KMS, CloudWatch, X-Ray, AMP, autoscaling. They reach these
#    through VPC endpoints (https_egress_prefix_list_ids for gateway endpoints such as S3;
#    https_egress_cidr_blocks = the VPC CIDR for interface endpoints) or, without endpoints, through
#    a NAT gateway (https_egress_cidr_blocks = ["0.0.0.0/0"]). DNS to the VPC resolver, IMDS and the
#    Time Sync Service (169.254.x.x) are link-local and not filtered by security groups. The envoy
#    container image is baked into the AMI, so boot pulls nothing from a registry.

resource "aws_security_group" "instance" {
  name        = "${local.name}-instance"
  description = "${local.name} parent instances: envoy 51052 from the load balancer only; HTTPS egress to AWS endpoints"
  vpc_id      = var.vpc_id
  tags        = merge(local.tags, { Name = "${local.name}-instance" })

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_ingress_rule" "instance_from_lb" {
  count                        = var.create_load_balancer ? 1 : 0
  security_group_id            = aws_security_group.instance.id
  description                  = "envoy (HTTP/1.1, h2, gRPC) from the load balancer"
  referenced_security_group_id = aws_security_group.lb[0].id
  ip_protocol                  = "tcp"
  from_port                    = local.envoy_port
  to_port                      = local.envoy_port
  tags                         = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "instance_from_groups" {
  for_each                     = toset(var.ingress_security_group_ids)
  security_group_id            = aws_security_group.instance.id
  description                  = "envoy (HTTP/1.1, h2, gRPC) from an external load balancer"
  referenced_security_group_id = each.value
  ip_protocol                  = "tcp"
  from_port                    = local.envoy_port
  to_port                      = local.envoy_port
  tags                         = local.tags
}

resource "aws_vpc_security_group_egress_rule" "instance_https_prefix_lists" {
  for_each          = toset(var.https_egress_prefix_list_ids)
  security_group_id = aws_security_group.instance.id
  description       = "HTTPS to a VPC endpoint (S3 gateway endpoint and the like)"
  prefix_list_id    = each.value
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  tags              = local.tags
}

resource "aws_vpc_security_group_egress_rule" "instance_https_cidrs" {
  for_each          = toset(var.https_egress_cidr_blocks)
  security_group_id = aws_security_group.instance.id
  description       = "HTTPS to AWS APIs (interface endpoints in the VPC, or NAT)"
  cidr_ipv4         = each.value
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  tags              = local.tags
}

resource "aws_security_group" "lb" {
  count       = var.create_load_balancer ? 1 : 0
  name        = "${local.name}-lb"
  description = "${local.name} load balancer: TLS 443/8443 in, envoy 51052 on the instances out"
  vpc_id      = var.vpc_id
  tags        = merge(local.tags, { Name = "${local.name}-lb" })

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_ingress_rule" "lb_tls" {
  for_each = var.create_load_balancer ? {
    for pair in setproduct([443, 8443], var.load_balancer_ingress_cidr_blocks) : "${pair[0]}-${pair[1]}" => {
      port = pair[0]
      cidr = pair[1]
    }
  } : {}
  security_group_id = aws_security_group.lb[0].id
  description       = "TLS clients on ${each.value.port}"
  cidr_ipv4         = each.value.cidr
  ip_protocol       = "tcp"
  from_port         = each.value.port
  to_port           = each.value.port
  tags              = local.tags
}

resource "aws_vpc_security_group_egress_rule" "lb_to_instances" {
  count                        = var.create_load_balancer ? 1 : 0
  security_group_id            = aws_security_group.lb[0].id
  description                  = "envoy on the instances (traffic and health checks)"
  referenced_security_group_id = aws_security_group.instance.id
  ip_protocol                  = "tcp"
  from_port                    = local.envoy_port
  to_port                      = local.envoy_port
  tags                         = local.tags
}
