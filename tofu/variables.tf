# ---------------------------------------------------------------------------
# Naming and environment
# ---------------------------------------------------------------------------

variable "function_name" {
  description = "Name of the Lambda function. Also the stem of the role, layer, rule, API, alarm and log group names, so it is kept short enough for the suffixes to fit IAM's 64-character limit."
  type        = string
  nullable    = false
  default     = "coc-refresh-worker"

  validation {
    condition     = can(regex("^[A-Za-z0-9_-]{1,48}$", var.function_name))
    error_message = "function_name must be 1-48 characters of letters, digits, '-' and '_'."
  }
}

variable "environment" {
  description = "Deployment environment: the ENVIRONMENT variable of the function, the `environment` dimension of its CloudWatch metrics, and part of the backlog alarm."
  type        = string
  nullable    = false

  validation {
    condition     = contains(["production", "staging", "development"], var.environment)
    error_message = "environment must be one of production, staging, development."
  }
}

variable "tags" {
  description = "Tags applied to every resource that takes tags."
  type        = map(string)
  nullable    = false
  default     = {}
}

# ---------------------------------------------------------------------------
# Function
# ---------------------------------------------------------------------------

variable "runtime" {
  description = "Lambda Python runtime. The seed asks for python3.11; AWS is retiring its Amazon Linux 2 runtimes (python3.11 among them), so plan the move to python3.12 (see README). The function and layer zips must be built for the same version (`package-lambda.sh --python 3.12`)."
  type        = string
  nullable    = false
  default     = "python3.11"

  validation {
    condition     = contains(["python3.11", "python3.12", "python3.13"], var.runtime)
    error_message = "runtime must be python3.11, python3.12 or python3.13."
  }
}

variable "architecture" {
  description = "Instruction set of the function and the layer: x86_64 or arm64. The zips must be built for it (`package-lambda.sh --arch arm64`), since psycopg-binary and orjson ship native code."
  type        = string
  nullable    = false
  default     = "x86_64"

  validation {
    condition     = contains(["x86_64", "arm64"], var.architecture)
    error_message = "architecture must be x86_64 or arm64."
  }
}

variable "memory_size" {
  description = "Memory of the function in MB. The seed sizes it at 512 MB; Lambda also scales CPU with memory."
  type        = number
  nullable    = false
  default     = 512

  validation {
    condition     = var.memory_size >= 128 && var.memory_size <= 10240 && floor(var.memory_size) == var.memory_size
    error_message = "memory_size must be a whole number of MB between 128 and 10240."
  }
}

variable "reserved_concurrency" {
  description = "Reserved concurrent executions for the function. -1 reserves nothing (the default); 0 stops every invocation (an emergency brake). A Redis lease already lets only one drain run at a time, but a hand-over runs two invocations at once (the drain and its successor) and health probes and POST /refresh need their own: reserve at least 3 if you reserve at all. See the README for the account-minimum pitfall."
  type        = number
  nullable    = false
  default     = -1

  validation {
    condition     = var.reserved_concurrency >= -1 && floor(var.reserved_concurrency) == var.reserved_concurrency
    error_message = "reserved_concurrency must be -1 (unreserved), 0 (stopped) or a positive whole number."
  }
}

variable "live_version" {
  description = "Pin the `live` alias to this published version number (rollback). null points the alias at the version this apply publishes."
  type        = string
  default     = null

  validation {
    condition     = var.live_version == null || can(regex("^[0-9]+$", var.live_version))
    error_message = "live_version must be a published version number such as \"12\" (not $LATEST), or null."
  }
}

variable "kms_key_arn" {
  description = "Customer managed KMS key that encrypts the function's environment variables at rest. null uses the AWS managed key for Lambda. The key policy must let the deploying principal create grants for Lambda."
  type        = string
  default     = null

  validation {
    condition     = var.kms_key_arn == null || can(regex("^arn:aws[a-zA-Z-]*:kms:", var.kms_key_arn))
    error_message = "kms_key_arn must be a KMS key ARN or null."
  }
}

# ---------------------------------------------------------------------------
# Code: from the CI artifacts bucket, or from local zips
# ---------------------------------------------------------------------------

variable "artifacts_bucket" {
  description = "S3 bucket CI uploads the artifacts to (the AWS_LAMBDA_ARTIFACTS_BUCKET secret). With commit_sha it selects refresh-worker-<sha>-<target>.zip, coclib-layer-<sha>-<target>.zip and their manifest refresh-worker-<sha>-<target>.json, where <target> is \"<runtime>-<architecture>\" (python3.11-x86_64). Leave null to deploy local zips instead."
  type        = string
  default     = null
}

variable "commit_sha" {
  description = "Commit whose artifacts to deploy: the <sha> in refresh-worker-<sha>-<target>.zip and coclib-layer-<sha>-<target>.zip, as package-lambda.sh names them (GITHUB_SHA in CI, or its --sha value)."
  type        = string
  default     = null

  validation {
    condition     = var.commit_sha == null || can(regex("^[A-Za-z0-9._-]+$", var.commit_sha))
    error_message = "commit_sha may hold only letters, digits, '.', '_' and '-' (the names package-lambda.sh accepts), or be null."
  }
}

variable "plan_without_artifacts" {
  description = "Plan without reading the artifacts from S3 (their listing and manifest): for when the deployed commit's objects have expired or been deleted. The function and layer keep the code they run (source_code_hash is left to what is deployed), so rolling back the `live` alias (live_version), disabling the schedule (schedule_enabled = false) and changing settings still plan and apply. Changing commit_sha, runtime or architecture at the same time is not checked against a manifest: keep it false for those."
  type        = bool
  nullable    = false
  default     = false
}

variable "migrate_on_deploy" {
  description = "Apply the database migrations as part of the deploy: each newly published version is invoked once with {\"action\": \"migrate\"} (aws_lambda_invocation, keyed by the version), and the `live` alias, which the schedule and the API invoke, moves only after it succeeded. A failed migration fails the apply and leaves `live` where it was. false: run it yourself before moving `live` (see Migrations in the README)."
  type        = bool
  nullable    = false
  default     = true
}

variable "use_layer" {
  description = "Deploy the coclib layer zip and attach it. Set false for a function zip built with `package-lambda.sh --single-zip`, which carries its dependencies itself."
  type        = bool
  nullable    = false
  default     = true
}

variable "function_zip_path" {
  description = "Local path of the function zip (dist/refresh-worker-<sha>-<target>.zip), used instead of S3 when artifacts_bucket is null."
  type        = string
  default     = null
}

variable "layer_zip_path" {
  description = "Local path of the coclib layer zip (dist/coclib-layer-<sha>-<target>.zip), used instead of S3 when artifacts_bucket is null and use_layer is true."
  type        = string
  default     = null
}

variable "manifest_path" {
  description = "Local path of the build's manifest (dist/refresh-worker-<sha>-<target>.json), when deploying local zips. null: function_zip_path with .zip replaced by .json, where package-lambda.sh writes it."
  type        = string
  default     = null
}

# ---------------------------------------------------------------------------
# Settings the function reads from its environment
# ---------------------------------------------------------------------------

variable "database_url" {
  description = "DATABASE_URL as a plain value: libpq URI of the Postgres database, password included. It then sits in the function's configuration, every published version and the state: prefer database_url_secret_arn or database_url_parameter. Give exactly one of the three."
  type        = string
  default     = null
  sensitive   = true

  validation {
    condition     = var.database_url == null || can(regex("^postgres(ql)?://", var.database_url))
    error_message = "database_url must be a postgres:// or postgresql:// URI."
  }
}

variable "database_url_secret_arn" {
  description = "DATABASE_URL_SECRET_ARN: full ARN of a Secrets Manager secret whose text is the whole postgresql:// URI. The function reads it once per container at cold start; the role may read exactly this secret."
  type        = string
  default     = null

  validation {
    condition     = var.database_url_secret_arn == null || can(regex("^arn:aws[a-zA-Z-]*:secretsmanager:[a-z0-9-]+:[0-9]{12}:secret:[A-Za-z0-9/_+=.@-]+-[A-Za-z0-9]{6}$", var.database_url_secret_arn))
    error_message = "database_url_secret_arn must be a full Secrets Manager secret ARN, ending in the 6-character suffix AWS adds (arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME-AbCdEf)."
  }
}

variable "database_url_parameter" {
  description = "DATABASE_URL_PARAMETER: name (/path/name) of an SSM Parameter Store SecureString holding the postgresql:// URI, in the function's region. The role may read exactly this parameter."
  type        = string
  default     = null

  validation {
    condition     = var.database_url_parameter == null || can(regex("^/?[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$", var.database_url_parameter))
    error_message = "database_url_parameter must be a parameter name such as /coc/prod/database-url."
  }
}

variable "redis_url" {
  description = "REDIS_URL as a plain value: redis://, rediss:// or unix:// URL of the queue's Redis. A password in it (an ElastiCache RBAC user's) then sits in the function's configuration, every published version and the state: prefer redis_url_secret_arn or redis_url_parameter. Give exactly one of the three."
  type        = string
  default     = null
  sensitive   = true

  validation {
    condition     = var.redis_url == null || can(regex("^(redis|rediss|unix)://", var.redis_url))
    error_message = "redis_url must start with redis://, rediss:// or unix://."
  }
}

variable "redis_url_secret_arn" {
  description = "REDIS_URL_SECRET_ARN: full ARN of a Secrets Manager secret whose text is the whole Redis URL (rediss://user:password@host:6379). The function reads it once per container at cold start; the role may read exactly this secret."
  type        = string
  default     = null

  validation {
    condition     = var.redis_url_secret_arn == null || can(regex("^arn:aws[a-zA-Z-]*:secretsmanager:[a-z0-9-]+:[0-9]{12}:secret:[A-Za-z0-9/_+=.@-]+-[A-Za-z0-9]{6}$", var.redis_url_secret_arn))
    error_message = "redis_url_secret_arn must be a full Secrets Manager secret ARN (…:secret:NAME-AbCdEf)."
  }
}

variable "redis_url_parameter" {
  description = "REDIS_URL_PARAMETER: name (/path/name) of an SSM Parameter Store SecureString holding the Redis URL, in the function's region. The role may read exactly this parameter."
  type        = string
  default     = null

  validation {
    condition     = var.redis_url_parameter == null || can(regex("^/?[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$", var.redis_url_parameter))
    error_message = "redis_url_parameter must be a parameter name such as /coc/prod/redis-url."
  }
}

variable "coc_email" {
  description = "COC_EMAIL: Clash of Clans developer-portal login. coc.py creates keys bound to the function's current egress IP. Give it with coc_password, or give coc_api_tokens instead."
  type        = string
  default     = null
}

variable "coc_password" {
  description = "COC_PASSWORD as a plain value: developer-portal password that goes with coc_email. Prefer coc_password_secret_arn or coc_password_parameter; give at most one of the three."
  type        = string
  default     = null
  sensitive   = true
}

variable "coc_password_secret_arn" {
  description = "COC_PASSWORD_SECRET_ARN: full ARN of a Secrets Manager secret whose text is the developer-portal password."
  type        = string
  default     = null

  validation {
    condition     = var.coc_password_secret_arn == null || can(regex("^arn:aws[a-zA-Z-]*:secretsmanager:[a-z0-9-]+:[0-9]{12}:secret:[A-Za-z0-9/_+=.@-]+-[A-Za-z0-9]{6}$", var.coc_password_secret_arn))
    error_message = "coc_password_secret_arn must be a full Secrets Manager secret ARN (…:secret:NAME-AbCdEf)."
  }
}

variable "coc_password_parameter" {
  description = "COC_PASSWORD_PARAMETER: name of an SSM SecureString holding the developer-portal password."
  type        = string
  default     = null

  validation {
    condition     = var.coc_password_parameter == null || can(regex("^/?[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$", var.coc_password_parameter))
    error_message = "coc_password_parameter must be a parameter name such as /coc/prod/portal-password."
  }
}

variable "coc_api_tokens" {
  description = "COC_API_TOKENS: static API tokens created on the developer portal for the function's fixed egress IP (a NAT gateway's Elastic IP, see README). Joined with commas."
  type        = list(string)
  nullable    = false
  default     = []
  sensitive   = true

  validation {
    condition     = alltrue([for t in var.coc_api_tokens : length(t) > 0 && !strcontains(t, ",")])
    error_message = "Each API token must be non-empty and contain no comma."
  }
}

variable "coc_api_tokens_secret_arn" {
  description = "COC_API_TOKENS_SECRET_ARN: full ARN of a Secrets Manager secret whose text is the comma-separated API tokens (the alternative to coc_api_tokens)."
  type        = string
  default     = null

  validation {
    condition     = var.coc_api_tokens_secret_arn == null || can(regex("^arn:aws[a-zA-Z-]*:secretsmanager:[a-z0-9-]+:[0-9]{12}:secret:[A-Za-z0-9/_+=.@-]+-[A-Za-z0-9]{6}$", var.coc_api_tokens_secret_arn))
    error_message = "coc_api_tokens_secret_arn must be a full Secrets Manager secret ARN (…:secret:NAME-AbCdEf)."
  }
}

variable "coc_api_tokens_parameter" {
  description = "COC_API_TOKENS_PARAMETER: name of an SSM SecureString holding the comma-separated API tokens."
  type        = string
  default     = null

  validation {
    condition     = var.coc_api_tokens_parameter == null || can(regex("^/?[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$", var.coc_api_tokens_parameter))
    error_message = "coc_api_tokens_parameter must be a parameter name such as /coc/prod/api-tokens."
  }
}

variable "secrets_kms_key_arn" {
  description = "Customer managed KMS key that encrypts the referenced secrets or SecureString parameters; the role gets kms:Decrypt on it, only through Secrets Manager and SSM. null when they use the AWS managed keys (aws/secretsmanager, aws/ssm), which need no grant."
  type        = string
  default     = null

  validation {
    condition     = var.secrets_kms_key_arn == null || can(regex("^arn:aws[a-zA-Z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/", var.secrets_kms_key_arn))
    error_message = "secrets_kms_key_arn must be a KMS key ARN (arn:aws:kms:REGION:ACCOUNT:key/ID), not an alias, or null."
  }
}

variable "coc_api_base_url" {
  description = "COC_API_BASE_URL: base URL of the Clash of Clans API."
  type        = string
  nullable    = false
  default     = "https://api.clashofclans.com/v1"

  validation {
    condition     = can(regex("^https?://", var.coc_api_base_url))
    error_message = "coc_api_base_url must be an http(s) URL."
  }
}

variable "coc_reqs_per_sec" {
  description = "COC_REQS_PER_SEC: request rate towards the CoC API. The worker clamps values above 30 to 30; this module refuses them instead."
  type        = number
  nullable    = false
  default     = 10

  validation {
    condition     = var.coc_reqs_per_sec > 0 && var.coc_reqs_per_sec <= 30
    error_message = "coc_reqs_per_sec must be greater than 0 and at most 30."
  }
}

variable "log_level" {
  description = "LOG_LEVEL of the function."
  type        = string
  nullable    = false
  default     = "INFO"

  validation {
    condition     = contains(["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], var.log_level)
    error_message = "log_level must be DEBUG, INFO, WARNING, ERROR or CRITICAL."
  }
}

variable "refresh_queue_key" {
  description = "REFRESH_QUEUE_KEY: Redis list the producers push to; any key, so an existing producer's list works as it is. Every other key the worker uses derives from it in the same Redis Cluster slot: a key with a {hash tag} lends it to them, a key without one becomes the tag ({refresh_queue}:inflight for refresh_queue)."
  type        = string
  nullable    = false
  default     = "{coc:refresh}:queue"

  validation {
    condition     = length(trimspace(var.refresh_queue_key)) > 0
    error_message = "refresh_queue_key must not be empty."
  }
}

variable "redis_cluster" {
  description = "REDIS_CLUSTER: true or false to say whether Redis is a cluster instead of detecting it at connect time (INFO cluster). null, the default, detects: right for ElastiCache (cluster mode, Serverless) and Valkey."
  type        = bool
  default     = null
}

variable "drain_linger_seconds" {
  description = "DRAIN_LINGER_SECONDS: how long a scheduled run that finds both lanes empty keeps its lease and waits for new requests, picking each up within about a second. The default, the schedule's 2 minutes, keeps one drainer always there (the next scheduled invocation takes over from it): a refresh lands in about a second at any hour, for about 3,650 billed seconds an hour, about $21.92 a month at 512 MB on x86_64 and $17.54 on arm64 (README, \"Linger\"). 0 returns at once: nearly free when idle, but a request made while no run is going waits for the next schedule, up to 2 minutes."
  type        = number
  default     = 120

  validation {
    condition     = var.drain_linger_seconds >= 0 && var.drain_linger_seconds <= 900
    error_message = "drain_linger_seconds must be from 0 to 900 seconds."
  }
}

variable "freshness" {
  description = "FRESHNESS: true (the default) settles a request whose snapshot is still inside the API's own cache lifetime (max-age minus Age) as skipped-fresh, without a call, so the rate limit goes to bodies that can have changed; false calls every request (fresh_until and changed are still recorded). See the main README, \"The freshness gate and change detection\"."
  type        = bool
  default     = true
}

variable "ledger_retention_days" {
  description = "LEDGER_RETENTION_DAYS: after each run, drop the ledger's daily partitions whose rows are all older than this many days. At the 30 requests/s limit with a constant backlog the ledger grows by about 5.2 million rows, about 1.6 GB with indexes, a day (two rows a request, about 306 bytes a row: bench/ledger.md), so the default 30 days hold up to about 48 GB; at the default 10/s, a third of that. null keeps all history. The database role must own refresh_ledger."
  type        = number
  default     = 30

  validation {
    condition     = var.ledger_retention_days == null || try(var.ledger_retention_days >= 1 && floor(var.ledger_retention_days) == var.ledger_retention_days, false)
    error_message = "ledger_retention_days must be a whole number of days, 1 or more, or null."
  }
}

# ---------------------------------------------------------------------------
# Schedule
# ---------------------------------------------------------------------------

variable "schedule_expression" {
  description = "EventBridge schedule of the drain."
  type        = string
  nullable    = false
  default     = "rate(2 minutes)"

  validation {
    condition     = can(regex("^(rate|cron)\\(.+\\)$", var.schedule_expression))
    error_message = "schedule_expression must be a rate(...) or cron(...) expression."
  }
}

variable "schedule_enabled" {
  description = "Whether the schedule fires. Set false to stop scheduled drains (rollback step 1); this also silences the schedule-not-firing alarm."
  type        = bool
  nullable    = false
  default     = true
}

variable "async_max_event_age_seconds" {
  description = "How long Lambda keeps an undelivered scheduled event before dropping it. Kept short: a late drain only waits behind the lease, and the next tick comes anyway."
  type        = number
  nullable    = false
  default     = 60

  validation {
    condition     = var.async_max_event_age_seconds >= 60 && var.async_max_event_age_seconds <= 21600
    error_message = "async_max_event_age_seconds must be between 60 and 21600."
  }
}

# ---------------------------------------------------------------------------
# Network
# ---------------------------------------------------------------------------

variable "subnet_ids" {
  description = "Private subnets to run the function in (for a database reachable only inside a VPC). Give them with security_group_ids, or neither. Their route to the internet must go through a NAT gateway (see README)."
  type        = list(string)
  nullable    = false
  default     = []
}

variable "security_group_ids" {
  description = "Security groups of the function's network interfaces when subnet_ids is set. They must reach Postgres (5432) and Redis: 6379 on ElastiCache, TLS included (ElastiCache serves TLS on the same port), on every node of a cluster."
  type        = list(string)
  nullable    = false
  default     = []
}

# ---------------------------------------------------------------------------
# Logs
# ---------------------------------------------------------------------------

variable "log_retention_days" {
  description = "Retention of the function's CloudWatch log group (and of the API access log group)."
  type        = number
  nullable    = false
  default     = 30

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be a retention CloudWatch Logs accepts (1, 3, 5, 7, 14, 30, 60, 90, ... 3653)."
  }
}

variable "log_kms_key_arn" {
  description = "KMS key ARN that encrypts the log groups. null keeps CloudWatch Logs' default encryption. The key policy must allow the logs service principal of the region."
  type        = string
  default     = null
}

# ---------------------------------------------------------------------------
# API Gateway (optional)
# ---------------------------------------------------------------------------

variable "create_api" {
  description = "Create the REST API with POST /refresh (API key required) and GET /health."
  type        = bool
  nullable    = false
  default     = false
}

variable "api_stage_name" {
  description = "Stage of the REST API; part of its URL."
  type        = string
  nullable    = false
  default     = "v1"

  validation {
    condition     = can(regex("^[A-Za-z0-9_-]{1,128}$", var.api_stage_name))
    error_message = "api_stage_name must be letters, digits, '-' or '_'."
  }
}

variable "health_requires_api_key" {
  description = "Require the API key on GET /health too. Off by default, as in the seed, so load balancers and uptime checks can call it."
  type        = bool
  nullable    = false
  default     = false
}

variable "api_throttle_rate_limit" {
  description = "Steady requests per second the stage accepts for all callers together (GET /health is public and queries Postgres and Redis)."
  type        = number
  nullable    = false
  default     = 5

  validation {
    condition     = var.api_throttle_rate_limit > 0
    error_message = "api_throttle_rate_limit must be positive."
  }
}

variable "api_throttle_burst_limit" {
  description = "Burst of requests the stage accepts for all callers together."
  type        = number
  nullable    = false
  default     = 10

  validation {
    condition     = var.api_throttle_burst_limit >= 1 && floor(var.api_throttle_burst_limit) == var.api_throttle_burst_limit
    error_message = "api_throttle_burst_limit must be a positive whole number."
  }
}

variable "usage_plan_rate_limit" {
  description = "Steady requests per second allowed to the API key (manual POST /refresh triggers)."
  type        = number
  nullable    = false
  default     = 1

  validation {
    condition     = var.usage_plan_rate_limit > 0
    error_message = "usage_plan_rate_limit must be positive."
  }
}

variable "usage_plan_burst_limit" {
  description = "Burst allowed to the API key."
  type        = number
  nullable    = false
  default     = 2

  validation {
    condition     = var.usage_plan_burst_limit >= 1 && floor(var.usage_plan_burst_limit) == var.usage_plan_burst_limit
    error_message = "usage_plan_burst_limit must be a positive whole number."
  }
}

variable "usage_plan_quota_per_day" {
  description = "Requests per day allowed to the API key."
  type        = number
  nullable    = false
  default     = 1000

  validation {
    condition     = var.usage_plan_quota_per_day >= 1 && floor(var.usage_plan_quota_per_day) == var.usage_plan_quota_per_day
    error_message = "usage_plan_quota_per_day must be a positive whole number."
  }
}

variable "api_logging_enabled" {
  description = "Write API Gateway access logs and execution errors to CloudWatch. Needs the account-level API Gateway CloudWatch role (aws_api_gateway_account), which this module does not manage because it is one per account and region."
  type        = bool
  nullable    = false
  default     = false
}

variable "api_xray_tracing_enabled" {
  description = "X-Ray tracing of the API stage (API Gateway's own sampled segments; the function itself is not traced, so its role needs no X-Ray permission)."
  type        = bool
  nullable    = false
  default     = true
}

# ---------------------------------------------------------------------------
# Alarms
# ---------------------------------------------------------------------------

variable "create_alarm_topic" {
  description = "Create an SNS topic and send every alarm and OK transition to it."
  type        = bool
  nullable    = false
  default     = false
}

variable "alarm_topic_kms_key_id" {
  description = "Customer managed KMS key for the alarm topic. Not the AWS managed alias/aws/sns: CloudWatch alarms cannot publish to a topic encrypted with it. The key policy must let cloudwatch.amazonaws.com use the key."
  type        = string
  default     = null
}

variable "alarm_action_arns" {
  description = "Further ARNs (existing SNS topics, ...) notified on alarm and OK transitions."
  type        = list(string)
  nullable    = false
  default     = []
}

variable "backlog_alarm_threshold" {
  description = "Queue length (the function's queue_size metric) above which the backlog alarm fires when it stays there."
  type        = number
  nullable    = false
  default     = 1000

  validation {
    condition     = var.backlog_alarm_threshold >= 0
    error_message = "backlog_alarm_threshold must not be negative."
  }
}

variable "backlog_alarm_evaluation_periods" {
  description = "Consecutive 5-minute periods in which the smallest reported queue_size must exceed the threshold before the backlog alarm fires."
  type        = number
  nullable    = false
  default     = 3

  validation {
    condition     = var.backlog_alarm_evaluation_periods >= 1 && floor(var.backlog_alarm_evaluation_periods) == var.backlog_alarm_evaluation_periods
    error_message = "backlog_alarm_evaluation_periods must be a positive whole number."
  }
}

variable "throttles_alarm_threshold" {
  description = "Throttled invocations (AWS/Lambda Throttles, sum over 10 minutes) above which the throttles alarm fires. 0: any throttle, as a scheduled drain that is throttled does not run."
  type        = number
  nullable    = false
  default     = 0

  validation {
    condition     = var.throttles_alarm_threshold >= 0
    error_message = "throttles_alarm_threshold must not be negative."
  }
}

# ---------------------------------------------------------------------------
# Dashboard
# ---------------------------------------------------------------------------

variable "create_dashboard" {
  description = "Create a CloudWatch dashboard named after the function: queue and in-flight, processed requests, API calls per second against the limit, outcomes per run, errors, duration against the timeout, throttles and dropped events, schedule deliveries, ledger size."
  type        = bool
  nullable    = false
  default     = true
}
