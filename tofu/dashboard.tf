# One CloudWatch dashboard for operators (var.create_dashboard, on by default). The worker's
# own metrics come from the Embedded Metric Format line each run logs (namespace
# CocRefreshWorker, dimensions environment and FunctionName; see worker/metrics.py); the rest are AWS/Lambda and
# AWS/Events metrics of this function and its schedule.

locals {
  emf         = ["CocRefreshWorker"]
  emf_dims    = ["environment", var.environment, "FunctionName", var.function_name]
  lambda_dims = ["FunctionName", aws_lambda_function.this.function_name]
  region      = data.aws_region.current.id
  timeout_ms  = 300000
  # Above the drain's own end (it stops taking work 5 s before the timeout): see alarms.tf.
  duration_alarm_ms = local.timeout_ms - 2000
  widget_width      = 12

  dashboard_widgets = [
    {
      title = "Both lanes and in-flight (at the end of each run)"
      stat  = "Maximum"
      metrics = [
        concat(local.emf, ["queue_size"], local.emf_dims, [{ label = "queued" }]),
        concat(local.emf, ["priority_queue_size"], local.emf_dims, [{ label = "priority lane" }]),
        concat(local.emf, ["inflight_size"], local.emf_dims, [{ label = "in flight (a killed run's leftovers)" }]),
      ]
      annotations = { horizontal = [{ label = "backlog alarm", value = var.backlog_alarm_threshold }] }
    },
    {
      title   = "Processed requests (fetched + failed)"
      stat    = "Sum"
      metrics = [concat(local.emf, ["processed_requests"], local.emf_dims)]
    },
    {
      title   = "CoC API calls per second, against the limit"
      stat    = "Maximum"
      metrics = [concat(local.emf, ["api_requests_per_second"], local.emf_dims, [{ label = "per run" }])]
      annotations = { horizontal = [
        { label = "COC_REQS_PER_SEC", value = var.coc_reqs_per_sec },
        { label = "never above", value = 30, color = "#d62728" },
      ] }
    },
    {
      title   = "Outcomes per run"
      stat    = "Sum"
      stacked = true
      metrics = [
        for name in ["fetched", "failed", "deferred", "skipped_deadline"] :
        concat(local.emf, [name], local.emf_dims)
      ]
    },
    {
      title = "Runs that halted on a fault, by cause"
      stat  = "Sum"
      metrics = [
        for cause in local.halt_causes :
        concat(local.emf, ["halted"], local.emf_dims, ["cause", cause])
      ]
    },
    {
      title = "Errors and schedule deliveries"
      stat  = "Sum"
      metrics = [
        concat(["AWS/Lambda", "Errors"], local.lambda_dims),
        ["AWS/Events", "Invocations", "RuleName", aws_cloudwatch_event_rule.schedule.name, { label = "scheduled deliveries" }],
        ["AWS/Events", "FailedInvocations", "RuleName", aws_cloudwatch_event_rule.schedule.name, { label = "failed deliveries" }],
      ]
    },
    {
      title = "Duration, against the timeout"
      stat  = "Maximum"
      metrics = [
        concat(["AWS/Lambda", "Duration"], local.lambda_dims, [{ label = "longest invocation (ms)" }]),
      ]
      annotations = { horizontal = [
        { label = "duration alarm", value = local.duration_alarm_ms },
        { label = "timeout", value = local.timeout_ms, color = "#d62728" },
      ] }
    },
    {
      title = "Throttles and dropped events"
      stat  = "Sum"
      metrics = [
        concat(["AWS/Lambda", "Throttles"], local.lambda_dims),
        concat(["AWS/Lambda", "AsyncEventsDropped"], local.lambda_dims),
      ]
    },
    {
      title   = "Ledger size (after each run's retention)"
      stat    = "Maximum"
      metrics = [concat(local.emf, ["ledger_bytes"], local.emf_dims, [{ label = "bytes on disk" }])]
    },
  ]
}

resource "aws_cloudwatch_dashboard" "this" {
  count = var.create_dashboard ? 1 : 0

  dashboard_name = var.function_name
  dashboard_body = jsonencode({
    widgets = [
      for i, w in local.dashboard_widgets : {
        type   = "metric"
        x      = (i % 2) * local.widget_width
        y      = floor(i / 2) * 6
        width  = local.widget_width
        height = 6
        properties = merge(
          {
            title   = w.title
            region  = local.region
            view    = "timeSeries"
            period  = 300
            stat    = w.stat
            stacked = try(w.stacked, false)
            metrics = w.metrics
          },
          can(w.annotations) ? { annotations = w.annotations } : {}
        )
      }
    ]
  })
}
