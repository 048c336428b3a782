# The Redis link's settings and signals: sse_redis_prefix and a /db in the URL keep every key and
# pub/sub channel where they say; the Prometheus output has the Redis figures; when Redis does not
# send a channel's history within sse_redis_sync_timeout (here: CLIENT PAUSE), a resuming stream
# goes on from the node's own history, with the reset event since that cannot be exact; once
# Redis answers again, a resume is exact.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use SSETest;
use SSERedis;
use SSEExpect qw(frames reset_frame);
use JSON::PP ();

my $locations = <<'CONF';
        location = /events {
            sse_subscribe $arg_topics;
            sse_heartbeat off;
        }
        location = /pub {
            sse_publish $arg_topic;
        }
        location = /stats {
            sse_stats;
        }
CONF

my $redis = SSERedis->new;
my $port = $redis->port;
my $url = $redis->url(db => 3);
my @nodes = map {
    SSETest->new(http => "sse_redis $url;\n    sse_redis_prefix app1:;\n    sse_redis_sync_timeout 700ms;",
                 server => $locations)->start
} 1 .. 2;
my ($A, $B) = @nodes;
END { local $?; $_->stop for grep { defined } @nodes; $redis->stop if $redis }
ok(SSERedis::wait_connected($_), 'node :' . $_->port . ' connected') for @nodes;
my $PRE = ":ok\n\n";

# --- prefix and db ------------------------------------------------------------------------------
my $sb = $B->subscribe('/events?topics=news');
ok($redis->wait_numsub('app1:news', 1), 'B listens to app1:news (the prefix)');
is($redis->numsub('sse:news'), 0, 'and not to sse:news');
my @ev = map { $A->publish_event('/pub?topic=news', "n$_") } 1 .. 3;
$sb->wait_body(length($PRE . frames(@ev)), 5);
is($sb->body, $PRE . frames(@ev), 'fan-out with a prefix and a db');
is($redis->cli('-n', 3, 'LLEN', 'app1:news'), 3, 'the history is in db 3 under the prefix');
is($redis->cli('-n', 0, 'EXISTS', 'app1:news'), 0, 'and not in db 0');
$sb->close;

# --- Prometheus ---------------------------------------------------------------------------------
my $prom = $A->request('GET', '/stats?format=prometheus')->{body};
like($prom, qr/^sse_redis_up 1$/m, 'sse_redis_up 1');
like($prom, qr/^sse_redis_events_sent_total 3$/m, 'sse_redis_events_sent_total 3');
like($prom, qr/^sse_redis_queue_events 0$/m, 'sse_redis_queue_events 0');
like($prom, qr/^# TYPE sse_redis_reconnects_total counter$/m, 'reconnects is a counter');
# And Prometheus's own parser reads them (Debian's python3-prometheus-client).
my $file = $A->dir . '/metrics.txt';
open my $fh, '>', $file or die $!;
print $fh $prom;
close $fh;
my $parsed = `/usr/bin/python3 - '$file' <<'PY'
import sys
from prometheus_client.parser import text_string_to_metric_families
for fam in text_string_to_metric_families(open(sys.argv[1]).read()):
    for s in fam.samples:
        if s.name.startswith("sse_redis"):
            labels = "".join(" " + s.labels[k] for k in ("address", "role") if k in s.labels)
            print(f"{s.name} {fam.type} {int(s.value)}{labels}")
PY`;
is($?, 0, 'the Prometheus parser accepts the output');
is($parsed, join('', map { "$_\n" } 'sse_redis_up gauge 1', 'sse_redis_reconnects_total counter 0',
                 'sse_redis_queue_events gauge 0', 'sse_redis_queue_dropped_total counter 0',
                 'sse_redis_channels gauge 0', 'sse_redis_events_sent_total counter 3',
                 'sse_redis_events_received_total counter 0',
                 "sse_redis_server_up gauge 1 127.0.0.1:$port primary",
                 "sse_redis_server_reconnects_total counter 0 127.0.0.1:$port primary"),
   'every Redis figure, its type and value, as the parser reads them');
# The link's servers, in the JSON too.
my $stats = JSON::PP::decode_json($A->request('GET', '/stats')->{body});
is_deeply($stats->{redis}{servers},
          [{address => "127.0.0.1:$port", role => 'primary', state => 'connected', reconnects => 0}],
          'stats: redis.servers names the one server, its role and state');
my $promb = $B->request('GET', '/stats?format=prometheus')->{body};
like($promb, qr/^sse_redis_events_received_total 3$/m, 'B: sse_redis_events_received_total 3');

# --- sync timeout -------------------------------------------------------------------------------
# Events on "late" published on A while B has never had the channel.
my @late = map { $A->publish_event('/pub?topic=late', "l$_") } 1 .. 4;
# Redis holds every command for 2.5 s: B cannot get the history in time.
$redis->cli('CLIENT', 'PAUSE', 2500, 'ALL');
my $t0 = time;
my $s1 = $B->resume('/events?topics=late', $late[1][0]);
my $want1 = $PRE . reset_frame($late[1][0], 'evicted');
$s1->wait_body(length $want1, 5);
my $waited = time - $t0;
is($s1->body, $want1, 'Redis paused: after sse_redis_sync_timeout the stream gets the reset (no history here)');
cmp_ok($waited, '>=', 0.6, sprintf 'it waited for the sync timeout (%.2f s)', $waited);
cmp_ok($waited, '<', 2.3, 'but not for Redis');
like($B->error_log, qr/\[info\].*redis did not send the channels' history within sse_redis_sync_timeout/,
     'the wait is logged at info');
sleep 2.5 - (time - $t0) + 0.3 if time - $t0 < 2.8;

# Redis answers again: B syncs the channel; a resume is exact now.
my $s2 = $B->resume('/events?topics=late', $late[1][0]);
my $want2 = $PRE . frames(@late[2, 3]);
$s2->wait_body(length $want2, 5);
$s2->drain(0.2);
is($s2->body, $want2, 'after the pause: resuming on B is exact (events 3 and 4)');
$_->close for $s1, $s2;
$_->finish for @nodes;
done_testing;
