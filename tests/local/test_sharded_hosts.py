"""The offline cloud's ``ShardedByS3Key``: each simulated host gets its own objects of a channel, all of them
between the hosts; ``FullyReplicated`` channels whole on every host."""

from __future__ import annotations

from cxr.local import hosts


def test_sharded_by_s3_key_deals_the_objects_in_key_order_to_disjoint_hosts(tmp_path):
    channel = tmp_path / "channel"
    channel.mkdir()
    names = [f"{i:06d}.tar" for i in range(7)]
    for name in names:
        (channel / name).write_bytes(name.encode())
    shares = []
    for index in range(3):
        target = tmp_path / f"algo-{index + 1}"
        hosts._place_channel(channel, target, "ShardedByS3Key", index, 3)
        shares.append(sorted(p.name for p in target.iterdir()))
    assert shares == [names[0::3], names[1::3], names[2::3]]
    assert (tmp_path / "algo-2" / names[1]).read_bytes() == names[1].encode()
    hosts._place_channel(channel, tmp_path / "whole", "FullyReplicated", 1, 3)
    assert sorted(p.name for p in (tmp_path / "whole").iterdir()) == names
