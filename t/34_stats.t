# sse_stats: the JSON figures and the same in Prometheus's text format (parsed by the Prometheus
# project's own Python parser) equal what the test did: streams over both workers, events
# published, delivered, replayed, resets; per-channel figures on request; bad requests refused.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use JSON::PP;
use SSETest;

my $t = SSETest->new(spread => 1, server => <<'CONF')->start;
        location = /events {
            sse_subscribe $arg_topics;
            sse_heartbeat off;
        }
        location = /pub {
            sse_publish $arg_topic;
            sse_history 10;
        }
        location = /stats {
            sse_stats;
        }
CONF

END { local $?; $t->stop if $t }

# Five streams, alternating between the two listeners so both workers hold some: three on a,
# two on a and b.
my @streams = $t->subscribe_spread(('/events?topics=st-a') x 3, ('/events?topics=st-a,st-b') x 2);
is($_->wait_body(5), ":ok\n\n", 'stream opens') for @streams;
my $st = $t->stats_until({subscribers => 5}, 5);
my @busy = grep { $_->{subscribers} > 0 } @{ $st->{workers} };
is(scalar @busy, 2, 'both workers hold streams');

# 4 events to a, 2 to b, then a batch of 3 to b: 9 published; a reaches 5 streams, b 2.
$t->publish('/pub?topic=st-a', "a$_") for 1 .. 4;
$t->publish('/pub?topic=st-b', "b$_") for 1 .. 2;
$t->publish('/pub?topic=st-b', "data: c1\n\ndata: c2\n\ndata: c3\n\n", headers => {'Content-Type' => 'text/event-stream'});
$_->events($_ == $streams[0] || $_ == $streams[1] || $_ == $streams[2] ? 4 : 9, 5) for @streams;
# One stream comes back with a garbage id: a reset, then the 9 retained events of a and b.
my $back = $t->resume('/events?topics=st-a,st-b', 'garbage');
my @back = $back->events(10, 5);
is(scalar @back, 10, 'the resumed stream gets the reset event and the 9 retained events');
is($back[0]{event}, 'reset', 'the reset first');

my %want = (subscribers => 6, channels => 2, events_published => 9, events_delivered => 4 * 5 + 5 * 2,
            events_stored => 9, events_retained => 9, events_replayed => 9, resets => 1, history_evictions => 0,
            slow_disconnects => 0, publishes_refused => 0, workers_reaped => 0);
$st = $t->stats_until(\%want, 5);
is($st->{$_}, $want{$_}, "JSON: $_ == $want{$_}") for sort keys %want;
my $per = 0;
$per += $_->{subscribers} for @{ $st->{workers} };
is($per, 6, 'JSON: per-worker subscribers add up to 6');
cmp_ok($st->{zone_bytes_used}, '>', 0, 'JSON: zone_bytes_used');
is($st->{zone_bytes_total}, 32 * 1024 * 1024, 'JSON: zone_bytes_total is sse_shm_size');
ok(!exists $st->{per_channel}, 'JSON: no per-channel figures unless asked for');

# Per channel, all of them or named ones.
my $all = $t->get_json('/stats?channels=all');
my %by = map { $_->{channel} => $_ } @{ $all->{per_channel} };
is_deeply([sort keys %by], ['st-a', 'st-b'], 'channels=all lists both channels, by name');
is_deeply([@{ $by{'st-a'} }{qw(subscribers events_published retained)}], [6, 4, 4], 'st-a: 6 streams, 4 published, 4 retained');
is_deeply([@{ $by{'st-b'} }{qw(subscribers events_published retained)}], [3, 5, 5], 'st-b: 3 streams, 5 published, 5 retained');
is($all->{per_channel_truncated}, JSON::PP::false, 'not truncated');
my $named = $t->get_json('/stats?channels=st-b,nosuch');
is_deeply([map { $_->{channel} } @{ $named->{per_channel} }], ['st-b'], 'channels=st-b,nosuch lists st-b only');

# Prometheus: asked the way a Prometheus server asks, and by format=prometheus.
my $accept = 'application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1';
my $p = $t->request('GET', '/stats?channels=all', headers => {Accept => $accept});
is($p->{status}, 200, 'Prometheus: 200');
is($p->{headers}{'content-type'}, 'text/plain; version=0.0.4; charset=utf-8', 'Prometheus: its content type');
is($t->request('GET', '/stats?format=prometheus')->{headers}{'content-type'}, 'text/plain; version=0.0.4; charset=utf-8',
   'format=prometheus gives the same');
is($t->request('GET', '/stats?format=json', headers => {Accept => $accept})->{headers}{'content-type'},
   'application/json', 'format=json wins over Accept');

# Parsed by prometheus_client (Debian's python3-prometheus-client): name{labels} -> value, type.
my $file = $t->dir . '/metrics.txt';
open my $fh, '>', $file or die $!;
print $fh $p->{body};
close $fh;
my $parsed = `/usr/bin/python3 - '$file' <<'PY'
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for fam in text_string_to_metric_families(open(sys.argv[1]).read()):
    for s in fam.samples:
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
        out[s.name + ("{" + labels + "}" if labels else "")] = {"value": s.value, "type": fam.type}
print(json.dumps(out))
PY`;
is($?, 0, 'the Prometheus parser accepts the output');
my $m = eval { decode_json($parsed) } || {};
my %prom = (sse_subscribers => 6, sse_channels => 2, sse_events_published_total => 9,
            sse_events_delivered_total => 30, sse_events_stored => 9, sse_events_retained => 9,
            sse_events_replayed_total => 9, sse_resets_total => 1, sse_history_evictions_total => 0,
            sse_slow_disconnects_total => 0, sse_publishes_refused_total => 0, sse_workers_reaped_total => 0,
            sse_zone_size_bytes => 32 * 1024 * 1024,
            'sse_channel_subscribers{channel="st-a"}' => 6, 'sse_channel_subscribers{channel="st-b"}' => 3,
            'sse_channel_events_published_total{channel="st-a"}' => 4,
            'sse_channel_events_published_total{channel="st-b"}' => 5,
            'sse_channel_events_retained{channel="st-b"}' => 5);
is($m->{$_}{value}, $prom{$_}, "Prometheus: $_ == $prom{$_}") for sort keys %prom;
is($m->{sse_events_published_total}{type}, 'counter', 'Prometheus: _total families are counters');
is($m->{sse_subscribers}{type}, 'gauge', 'Prometheus: sse_subscribers is a gauge');
my $wsum = 0;
$wsum += $m->{$_}{value} for grep { /^sse_worker_subscribers\{pid="\d+"\}$/ } keys %$m;
is($wsum, 6, 'Prometheus: per-worker series add up to 6');
cmp_ok($m->{sse_zone_used_bytes}{value}, '>', 0, 'Prometheus: sse_zone_used_bytes');
ok(exists $m->{sse_uptime_seconds}, 'Prometheus: sse_uptime_seconds');
# Two figures share one family: its HELP and TYPE once, then a sample for each limit.
my ($refused) = $p->{body} =~ /(# HELP sse_subscribers_refused_total .*?)(?=# HELP |\z)/s;
is($refused, "# HELP sse_subscribers_refused_total Streams refused by a limit, by the limit.\n"
   . "# TYPE sse_subscribers_refused_total counter\n"
   . "sse_subscribers_refused_total{limit=\"max_subscribers\"} 0\n"
   . "sse_subscribers_refused_total{limit=\"per_key\"} 0\n", 'Prometheus: a shared family, exactly');

# Refusals.
my $r = $t->request('GET', '/stats?format=xml');
is_deeply([$r->{status}, $r->{body}], [400, "unknown format: use format=json or format=prometheus\n"], 'format=xml: 400');
$r = $t->request('GET', '/stats?channels=a%20b');
is($r->{status}, 400, 'a bad channel list: 400');
like($r->{body}, qr/^invalid channel name "a b".*\(or channels=all\)\n\z/, 'with the reason');
$r = $t->request('POST', '/stats', body => 'x');
is($r->{status}, 405, 'POST: 405');

$_->close for @streams, $back;
$t->finish;
done_testing;
