# Optional application load balancer: TLS ends here (ARCHITECTURE.md); envoy on the instances
# speaks HTTP/1.1, h2c and gRPC on port 51052.
#   443  -> HTTP/1.1 target group (browsers and JSON clients; the ALB still offers h2 to them)
#   8443 -> HTTP/2 target group, and the gRPC target group for content-type application/grpc*
# Health checks: GET /healthz (envoy; 503 while the data loads) and grpc.health.v1.Health/Check.

locals {
  lb_count = var.create_load_balancer ? 1 : 0

  target_groups = var.create_load_balancer ? {
    # envoy answers GET /healthz itself: 200 only while kv-server reports
    # loadbalancer-healthcheck SERVING, 503 during the initial data load (docs/runtime.md). The
    # transcoded /healthcheck would answer 200 in both states, with the status in the body.
    http1 = {
      protocol_version = "HTTP1"
      health_path      = "/healthz"
      health_matcher   = "200"
    }
    http2 = {
      protocol_version = "HTTP2"
      health_path      = "/healthz"
      health_matcher   = "200"
    }
    # The standard gRPC health method. It returns gRPC status 0 with NOT_SERVING in the body
    # while the server loads, so this group cannot see loading; the instance is only registered
    # once the launcher saw SERVING, and the HTTP groups above do see it (the autoscaling group's
    # ELB health check counts an instance unhealthy in any group).
    grpc = {
      protocol_version = "GRPC"
      health_path      = "/grpc.health.v1.Health/Check"
      health_matcher   = "0" # gRPC status OK
    }
  } : {}
}

resource "aws_lb" "this" {
  # The web ACL is an input (waf_web_acl_arn) owned by whoever runs WAF for the account; its rule
  # sets, the Log4j one included, are chosen there. The service has no Java in its path.
  #checkov:skip=CKV2_AWS_76:the WAF web ACL and its managed rules are an input managed outside this module
  count                            = local.lb_count
  name                             = local.name
  load_balancer_type               = "application"
  internal                         = var.load_balancer_internal
  subnets                          = var.load_balancer_subnet_ids
  security_groups                  = [aws_security_group.lb[0].id]
  drop_invalid_header_fields       = true
  enable_deletion_protection       = var.load_balancer_deletion_protection
  enable_http2                     = true
  desync_mitigation_mode           = "strictest"
  idle_timeout                     = 120
  enable_cross_zone_load_balancing = true

  dynamic "access_logs" {
    for_each = var.load_balancer_access_logs_bucket == null ? [] : [var.load_balancer_access_logs_bucket]
    content {
      bucket  = access_logs.value
      prefix  = local.name
      enabled = true
    }
  }

  tags = local.tags

  lifecycle {
    precondition {
      condition     = length(var.load_balancer_subnet_ids) >= 2
      error_message = "create_load_balancer needs load_balancer_subnet_ids in at least two availability zones."
    }
    precondition {
      condition     = var.certificate_arn != null
      error_message = "create_load_balancer needs certificate_arn for the TLS listeners."
    }
  }
}

resource "aws_lb_target_group" "this" {
  for_each = local.target_groups
  # TLS ends at the load balancer by design (ARCHITECTURE.md): envoy speaks plaintext h1/h2c/gRPC
  # on 51052 inside the VPC, and only the load balancer's security group may reach that port.
  #checkov:skip=CKV_AWS_378:TLS terminates at the ALB; the ALB-to-instance hop stays in the VPC behind security groups

  name                 = "${local.name}-${each.key}"
  vpc_id               = var.vpc_id
  target_type          = "instance"
  port                 = local.envoy_port
  protocol             = "HTTP"
  protocol_version     = each.value.protocol_version
  deregistration_delay = 30

  health_check {
    enabled             = true
    port                = "traffic-port"
    protocol            = "HTTP"
    path                = each.value.health_path
    matcher             = each.value.health_matcher
    interval            = 15
    timeout             = 5
    healthy_threshold   = 2
    unhealthy_threshold = 3
  }

  tags = local.tags
}

resource "aws_lb_listener" "https" {
  count             = local.lb_count
  load_balancer_arn = aws_lb.this[0].arn
  port              = 443
  protocol          = "HTTPS"
  ssl_policy        = var.load_balancer_ssl_policy
  certificate_arn   = var.certificate_arn

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.this["http1"].arn
  }

  tags = local.tags
}

resource "aws_lb_listener" "h2" {
  count             = local.lb_count
  load_balancer_arn = aws_lb.this[0].arn
  port              = 8443
  protocol          = "HTTPS"
  ssl_policy        = var.load_balancer_ssl_policy
  certificate_arn   = var.certificate_arn

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.this["http2"].arn
  }

  tags = local.tags
}

resource "aws_lb_listener_rule" "grpc" {
  count        = local.lb_count
  listener_arn = aws_lb_listener.h2[0].arn
  priority     = 10

  condition {
    http_header {
      http_header_name = "content-type"
      values           = ["application/grpc*"]
    }
  }

  action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.this["grpc"].arn
  }

  tags = local.tags
}

resource "aws_wafv2_web_acl_association" "this" {
  count        = var.create_load_balancer && var.waf_web_acl_arn != null ? 1 : 0
  resource_arn = aws_lb.this[0].arn
  web_acl_arn  = var.waf_web_acl_arn
}
