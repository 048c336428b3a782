# sse_redis names one server, and it is a Redis Cluster node: the node reads the cluster's map
# from it (no second URL needed). A node whose map is unusable (here: a lone cluster node with no
# slots assigned) is said once, at [warn], in plain words; the node keeps serving its own streams,
# queues what it publishes and keeps trying under the usual backoff; once the cluster has its
# slots the link comes up and sends the queue. A Redis whose user may not run INFO is taken as
# not a cluster (the handshake goes on).
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(sleep);
use SSETest;
use SSERedis;
use SSEExpect qw(frames);

my $locations = SSERedis::locations(pub => 'sse_history 100;', more => <<'CONF');
        location = /pevents {
            sse_subscribe $arg_topics;
            sse_subscribe_patterns on;
        }
CONF

my $redis = SSERedis->new(extra_conf => "cluster-enabled yes\ncluster-config-file nodes.conf\n");
# A user that may do what the link does, but not INFO.
my $plain = SSERedis->new(users => [[linker => 'pw', '~* &* +@all -info']]);
my ($A) = $redis->nodes(1, server => $locations, http => "    sse_redis_reconnect 50ms 200ms;\n");
my ($B) = $plain->nodes(1, server => $locations, url => $plain->url(user => 'linker', password => 'pw'));
END { local $?; $_->stop for grep { defined } $A, $B; $_->stop for grep { defined } $redis, $plain }

like($redis->cli('INFO', 'cluster'), qr/cluster_enabled:1/, 'the Redis is a cluster node');
my $P = $redis->port;
my @lines;
ok(SSETest::wait_until(sub {
    @lines = grep { /sse: redis/ } split /\n/, $A->error_log;
    grep { /unusable map/ } @lines;
}, 5), 'the node reads the map and finds it unusable');
sleep 1.5;    # several attempts under the backoff
@lines = grep { /sse: redis/ } split /\n/, $A->error_log;
my @noticed = grep { /\[notice\] .*sse: redis at 127\.0\.0\.1:$P is a Redis Cluster node; reading its slots$/ } @lines;
is(scalar @noticed, 1, 'once, at [notice]: a Redis Cluster node') or diag(join "\n", @lines);
my @said = grep { /\[warn\] .*sse: redis at 127\.0\.0\.1:$P unreachable: an unusable map of slots from 127\.0\.0\.1:$P: slot 0 has no primary; retrying$/ } @lines;
is(scalar @said, 1, 'once, at [warn], in plain words') or diag(join "\n", @lines);
is(scalar(grep { /\[(?:warn|error)\]/ } @lines), 1, 'and no other warn or error line, not one per attempt') or diag(join "\n", @lines);
isnt($A->stats->{redis}{state}, 'connected', 'the link is not up');
my $s = $A->subscribe('/events?topics=n');
my $ev = $A->publish_event('/pub?topic=n', 'local');
$s->wait_body(length(":ok\n\n" . $ev->[1]), 5);
is($s->body, ":ok\n\n" . $ev->[1], 'its own streams still get its events');
is($ev->[2]{redis}, 'queued', 'the publish says queued');
$s->close;

# The cluster gets its slots (all on this one node): the link comes up and sends the queue.
is($redis->cli('CLUSTER', 'ADDSLOTSRANGE', '0', '16383'), 'OK', 'CLUSTER ADDSLOTSRANGE 0 16383');
ok(SSERedis::wait_connected($A, 10), 'the link comes up once the map is whole');
my $entries = '';
ok(SSERedis::wait_value(sub { $entries = $redis->cli('LRANGE', 'sse:n', '0', '-1'); $entries =~ /"i":"$ev->[0]"/ }, 1, 5),
   'the queued event reached Redis, in the history of its channel') or diag($entries);
is($redis->cli('PUBSUB', 'NUMPAT'), '0', 'no classic pattern subscription');
my ($server) = grep { $_->{address} eq "127.0.0.1:$P" && $_->{role} eq 'cluster node' } @{ $A->stats->{redis}{servers} };
is($server && $server->{state}, 'connected', 'stats: redis.servers names it, role "cluster node", connected');
my $p = $A->request('GET', '/pevents?topics=blog.*');
is($p->{status}, 400, 'a pattern stream is refused now that the link follows a cluster');
is($p->{body}, "channel patterns cannot be used with Redis Cluster\n", 'with the reason');

ok(SSERedis::wait_connected($B), 'a user without INFO: the link comes up all the same');

$_->finish for $A, $B;
done_testing;
