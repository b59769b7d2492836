"""A greenfill API client in Python, generated from proto/greenfill/v1/*.proto with
grpcio-tools. It proves the API is usable from another language: it submits a job,
retries it idempotently, reads it back, lists, watches it while cancelling it, and
checks that a bad field and a missing token are refused.

    python greenfill_client.py HOST:PORT TOKEN
"""

import sys
import uuid

import grpc
from google.protobuf import duration_pb2

from greenfill.v1 import jobs_pb2, jobs_pb2_grpc


def main(target: str, token: str) -> int:
    auth = [("authorization", f"Bearer {token}")]
    with grpc.insecure_channel(target) as channel:
        jobs = jobs_pb2_grpc.JobServiceStub(channel)
        spec = jobs_pb2.JobSpec(
            name="from-python",
            command=["echo", "hello from python"],
            cpu_cores=0.5,
            memory_bytes=256 << 20,
            expected_duration=duration_pb2.Duration(seconds=600),
            labels={"client": "python"},
        )
        rid = str(uuid.uuid4())
        first = jobs.SubmitJob(jobs_pb2.SubmitJobRequest(request_id=rid, spec=spec), metadata=auth)
        again = jobs.SubmitJob(jobs_pb2.SubmitJobRequest(request_id=rid, spec=spec), metadata=auth)
        assert not first.duplicate and again.duplicate, (first, again)
        assert first.job.id == again.job.id
        got = jobs.GetJob(jobs_pb2.GetJobRequest(id=first.job.id), metadata=auth)
        assert got.spec.name == "from-python" and got.state == jobs_pb2.JOB_STATE_QUEUED, got
        listed = jobs.ListJobs(jobs_pb2.ListJobsRequest(labels={"client": "python"}), metadata=auth)
        assert [j.id for j in listed.jobs] == [first.job.id], listed
        # Watch from the revision read, then cancel: the watch sees the change.
        events = jobs.WatchJobs(
            jobs_pb2.WatchJobsRequest(ids=[first.job.id], since_revision=got.revision), metadata=auth, timeout=10
        )
        cancelled = jobs.CancelJob(jobs_pb2.CancelJobRequest(id=first.job.id, reason="python says so"), metadata=auth)
        assert cancelled.state == jobs_pb2.JOB_STATE_CANCELLED, cancelled
        event = next(iter(events))
        assert event.job.id == first.job.id and event.job.state == jobs_pb2.JOB_STATE_CANCELLED, event
        assert event.previous_state == jobs_pb2.JOB_STATE_QUEUED, event
        events.cancel()

        bad = jobs_pb2.JobSpec()
        bad.CopyFrom(spec)
        bad.cpu_cores = -2
        try:
            jobs.SubmitJob(jobs_pb2.SubmitJobRequest(request_id=str(uuid.uuid4()), spec=bad), metadata=auth)
            raise AssertionError("negative cores accepted")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
            assert e.details().startswith("spec.cpu_cores = -2"), e.details()
        try:
            jobs.GetJob(jobs_pb2.GetJobRequest(id=first.job.id))
            raise AssertionError("a call without a token was answered")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.UNAUTHENTICATED, e
    print(f"python client ok: job {first.job.id}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
