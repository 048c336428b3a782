# sse_redis pointed at a Redis Cluster node (not supported yet): the node says so once, at
# [error], in plain words, keeps serving its own streams and keeps trying (slowly, under the
# usual backoff) instead of starting over at every event on MOVED replies. A Redis whose user
# may not run INFO is taken as not a cluster (the handshake goes on).
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(sleep);
use SSETest;
use SSERedis;
use SSEExpect qw(frames);

my $locations = SSERedis::locations();

my $redis = SSERedis->new(extra_conf => "cluster-enabled yes\ncluster-config-file nodes.conf\n");
# A user that may do what the link does, but not INFO.
my $plain = SSERedis->new(users => [[linker => 'pw', '~* &* +@all -info']]);
my ($A) = $redis->nodes(1, server => $locations, http => "    sse_redis_reconnect 50ms 200ms;\n");
my ($B) = $plain->nodes(1, server => $locations, url => $plain->url(user => 'linker', password => 'pw'));
END { local $?; $_->stop for grep { defined } $A, $B; $_->stop for grep { defined } $redis, $plain }

like($redis->cli('INFO', 'cluster'), qr/cluster_enabled:1/, 'the Redis is a cluster node');
my @lines;
ok(SSETest::wait_until(sub {
    @lines = grep { /sse: redis/ } split /\n/, $A->error_log;
    grep { /is a Redis Cluster node/ } @lines;
}, 5), 'the node says it is a Redis Cluster node');
sleep 1.5;    # several attempts under the backoff
@lines = grep { /sse: redis/ } split /\n/, $A->error_log;
my @said = grep { /\[error\] .*sse: redis at 127\.0\.0\.1:\d+ is a Redis Cluster node, which this version does not support yet \(use one Redis, or Sentinel\)$/ } @lines;
is(scalar @said, 1, 'once, at [error], in plain words') or diag(join "\n", @lines);
ok(!grep({ /\[warn\]/ } @lines), 'and no warn line per attempt') or diag(join "\n", @lines);
isnt($A->stats->{redis}{state}, 'connected', 'the link is not up');
my $s = $A->subscribe('/events?topics=n');
my $ev = $A->publish_event('/pub?topic=n', 'local');
$s->wait_body(length(":ok\n\n" . $ev->[1]), 5);
is($s->body, ":ok\n\n" . $ev->[1], 'its own streams still get its events');
is($ev->[2]{redis}, 'queued', 'the publish says queued');
$s->close;

ok(SSERedis::wait_connected($B), 'a user without INFO: the link comes up all the same');

$_->finish for $A, $B;
done_testing;
