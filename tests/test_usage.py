"""Right-sizing from Slurm's accounting: sizes and times as sacct writes them, and the hints."""

import pytest

from crackhpc.slurm import parse_sacct
from crackhpc.usage import Usage, seconds, size_mb


@pytest.mark.parametrize(
    "text, mb",
    [
        ("1219876K", 1191.29),
        ("4000M", 4000),
        ("1.50G", 1536),
        ("2Gn", 2048),
        ("1Gc", 4096),
        ("", None),
        ("garbage", None),
    ],
)
def test_sizes(text, mb):
    value = size_mb(text, cpus=4)
    assert value == (None if mb is None else pytest.approx(mb, abs=0.01))


@pytest.mark.parametrize(
    "text, s", [("00:11.935", 11.935), ("01:02:03", 3723), ("1-00:00:01", 86401), ("UNLIMITED", None), ("", None)]
)
def test_times(text, s):
    assert seconds(text) == (None if s is None else pytest.approx(s))


def test_hints_say_what_to_ask_for_instead():
    wasteful = Usage(elapsed_s=540, limit_s=180 * 60, cpus=8, cpu_s=540 * 1.2, req_mem_mb=32 * 1024, peak_mem_mb=2150)
    assert wasteful.hints() == [
        "requested 32 GB, peak 2.1 GB: mem_gb: 4 would do",
        "requested 8 CPUs, used 1.2 on average: cpus_per_task: 2 would do",
        "time limit 180 min, ran 9 min: timeout_min: 20 would do",
    ]
    snug = Usage(elapsed_s=3000, limit_s=3600, cpus=4, cpu_s=3000 * 3.5, req_mem_mb=4096, peak_mem_mb=3000)
    assert snug.hints() == [] and snug.cpu_efficiency == pytest.approx(0.875)


def test_usage_comes_from_the_allocation_and_the_peak_from_its_steps():
    text = (
        "JobID|State|Elapsed|NodeList|AllocTRES|Reason|ElapsedRaw|TotalCPU|MaxRSS|ReqMem|AllocCPUS|TimelimitRaw\n"
        "7_1|COMPLETED|00:10:00|n1|cpu=4,mem=8G,gres/gpu=1|None|600|20:00.000||8G|4|60\n"
        "7_1.batch|COMPLETED|00:10:00|n1|cpu=4||600|00:00.100|12000K||4|\n"
        "7_1.0|COMPLETED|00:10:00|n1|cpu=4||600|19:59.900|1572864K||4|\n"
    )
    usage = parse_sacct(text)["7_1"].usage
    assert (usage.elapsed_s, usage.limit_s, usage.cpus, usage.gpus) == (600, 3600, 4, 1)
    assert usage.peak_mem_mb == 1536 and usage.req_mem_mb == 8192 and usage.cpu_efficiency == pytest.approx(0.5)
