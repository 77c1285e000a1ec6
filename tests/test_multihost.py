"""Real multi-host runs: two Linux network namespaces on this machine with their own addresses,
joined by veth links, reached through an ssh stand-in (tests/cluster/ssh). Needs root and
iproute2; .ci/run runs as root."""
import os

import pytest

from helpers import BIN, REPO_ROOT, link_bytes, run, weights_digests


FLAGS = ["--max_steps", "6", "--batch_size", "16", "--no_download", "--seed", "3",
         # One thread a rank in both topologies, so their float sums are the same.
         "--threads_per_rank", "1"]
MEGABYTE = 1 << 20



@pytest.fixture(scope="module")
def one_host_digest(tiny_data, tmp_path_factory):
    result = run([os.path.join(BIN, "horovodrun"), "-np", "2", "--gloo",
                  os.path.join(BIN, "python"), "-m", "hvd_cifar.train", "--data_dir",
                  str(tiny_data), "--train_dir", str(tmp_path_factory.mktemp("one_host")),
                  *FLAGS])
    assert result.returncode == 0, result.stderr[-3000:]
    return weights_digests(result.stdout)["0"]


@pytest.mark.parametrize("controller", ["gloo", "mpi"])
def test_multinode_sh_trains_across_two_hosts_to_the_one_host_weights(
        namespace_hosts, tiny_data, one_host_digest, tmp_path, controller):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("10.200.0.2 slots=1\n10.200.0.3 slots=1\n")
    before = {link: link_bytes(link) for link in ("vethA", "vethB")}
    env = {**namespace_hosts, "NETWORK_INTERFACE": "hvdbr0", "HVD_CONTROLLER": controller,
           "DATA_DIR": str(tiny_data),
           # Open MPI's daemons must call home over the hosts' network, not loopback.
           "MPI_ARGS": "--mca oob_tcp_if_include hvdbr0"}
    result = run([os.path.join(REPO_ROOT, "launch", "multinode.sh"), str(hostfile),
                  "--data_dir", str(tiny_data), "--train_dir", str(tmp_path / "run"), *FLAGS],
                 env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "check_cluster: 2 hosts ready" in result.stdout
    assert "2 ranks (1 on this host)" in result.stdout  # one rank in each namespace
    digests = weights_digests(result.stdout)
    assert digests == {"0": one_host_digest, "1": one_host_digest}
    for link, count in before.items():  # the gradients crossed both virtual links
        assert link_bytes(link) - count > 10 * MEGABYTE, link


def test_check_cluster_lists_a_silent_host_and_a_mismatched_build(namespace_hosts, tiny_data,
                                                                  tmp_path):
    hostfile = tmp_path / "hosts"
    # 10.200.0.4 is hvdB with Horovod claiming 0.27.0 (see tests/cluster/ssh); .9 is down.
    hostfile.write_text("10.200.0.2 slots=1\n10.200.0.4 slots=1\n10.200.0.9:1\n")
    result = run([os.path.join(REPO_ROOT, "launch", "check_cluster.sh"), str(hostfile)],
                 env={**namespace_hosts, "DATA_DIR": str(tiny_data)})
    assert result.returncode == 1
    problems = result.stdout.splitlines()
    assert len(problems) == 2, result.stdout
    assert problems[0].startswith("check_cluster: 10.200.0.4: build differs: ")
    assert "horovod0.27.0" in problems[0] and "horovod0.28.1" in problems[0]
    assert problems[1] == ("check_cluster: 10.200.0.9: not reachable by ssh without a password "
                           "(ssh 10.200.0.9 true failed)")
    assert "2 problems on the hosts of" in result.stderr
