# Fan-out: 200 streams spread over 2 workers (reuseport) each get all 100 events, in order,
# none lost or duplicated.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time);
use SSETest;

my $N = $ENV{SSE_FANOUT_STREAMS} // 200;
my $EVENTS = $ENV{SSE_FANOUT_EVENTS} // 100;

# The harness's own server listens without reuseport: this test's server (on the extra port)
# has reuseport, so the kernel spreads its connections over both workers.
my $t = SSETest->new(workers => 2, extra_ports => 1, http => <<'HTTP')->start;
    server {
        listen 127.0.0.1:%%PORT1%% reuseport;
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
    }
HTTP
my $port = $t->port(1);
my $PRE = ":ok\n\n";

# If the test dies midway, stop nginx before File::Temp removes its directory (and pid file).
END { local $?; $t->stop if $t }

sub stats { my $r = $t->request('GET', '/stats', port => $port); return SSETest::decode_json($r->{body}) }

my @c;
for my $i (1 .. $N) {
    push @c, SSEClient->new(port => $port, path => '/events?topics=fan', no_wait => 1);
}
# Read all heads (each client's socket is nonblocking).
for my $c (@c) { $c->_read_head(5) }
is(scalar(grep { ($_->status // 0) == 200 } @c), $N, "all $N streams answered 200");

my $end = time + 10;
while (time < $end && grep { length($_->body) < length $PRE } @c) {
    $_->_fill(0.01) for grep { length($_->body) < length $PRE } @c;
}
is(scalar(grep { $_->body eq $PRE } @c), $N, "all $N streams got the preamble");

ok(SSETest::wait_until(sub { stats()->{subscribers} == $N }, 5), "stats: $N subscribers");
my $st = stats();
is($st->{subscribers}, $N, "stats: subscribers is $N");
diag(explain($st->{workers})) if $ENV{TEST_VERBOSE};
my @busy = grep { $_->{subscribers} > 0 } @{ $st->{workers} || [] };
cmp_ok(scalar @busy, '>=', 2, 'the streams landed on 2 workers') or diag(explain($st->{workers}));
my $sum = 0;
$sum += $_->{subscribers} for @{ $st->{workers} || [] };
is($sum, $N, 'the per-worker figures add up to the total');
is_deeply([sort { $a <=> $b } map { $_->{pid} } @busy], [$t->worker_pids], 'the busy workers are the live workers')
    if @busy == 2;

my @ids;
my @frames;
my $t0 = time;
for my $n (1 .. $EVENTS) {
    my $r = $t->request('POST', "/pub?topic=fan&event=tick", body => "event $n", port => $port);
    my $j = $r->{status} == 202 ? SSETest::decode_json($r->{body}) : {};
    is($r->{status}, 202, "publish $n: 202") unless $r->{status} == 202;
    is($j->{subscribers}, $N, "publish $n reached $N subscribers") unless ($j->{subscribers} // -1) == $N;
    push @ids, $j->{id} // "missing-$n";
    push @frames, "id: " . ($j->{id} // '') . "\nevent: tick\ndata: event $n\n\n";
    # Every 10 publishes, take what has arrived on every stream without waiting.
    if ($n % 10 == 0) { $_->_fill(0) for @c }
}
is(scalar(grep { /^\d+$/ } @ids), $EVENTS, "all $EVENTS publishes answered 202 with an id");
cmp_ok($ids[$_], '>', $ids[$_ - 1], "id $_ increases") for grep { $ids[$_] !~ /missing/ } 1 .. $#ids;

# Drain: round-robin over the streams with small waits until all have all events.
$end = time + 15;
while (time < $end) {
    my @short = grep { scalar(@{ $_->{events} }) < $EVENTS && !$_->eof } @c;
    last unless @short;
    $_->_fill(0.005) for @short;
}
# Anything extra (a duplicate) would show within a short while.
my $grace = time + 0.3;
while (time < $grace) { $_->_fill(0) for @c; Time::HiRes::sleep(0.02) }

my $expected_body = $PRE . join('', @frames);
my ($full, $exact_ids, $exact_body, $open) = (0, 0, 0, 0);
for my $i (0 .. $#c) {
    my $c = $c[$i];
    my @got = map { $_->{id} } @{ $c->{events} };
    $full++ if @got == $EVENTS;
    if (join(',', @got) eq join(',', @ids)) {
        $exact_ids++;
    } elsif ($i - $exact_ids < 3) {
        my @diff = grep { ($got[$_] // '') ne $ids[$_] } 0 .. $#ids;
        splice @diff, 5 if @diff > 5;
        diag("stream $i: " . scalar(@got) . " events; first differences (got!=want): " .
             join(' ', map { ($got[$_] // 'none') . '!=' . $ids[$_] } @diff));
    }
    $exact_body++ if $c->body eq $expected_body;
    $open++ unless $c->eof;
}
is($full, $N, "all $N streams got exactly $EVENTS events");
is($exact_ids, $N, "all $N streams got the ids of the publishes, in order, once each");
is($exact_body, $N, "all $N stream bodies are byte-exact");
is($open, $N, "all $N streams are still open");
diag(sprintf('publish and deliver: %.2f s', time - $t0)) if $ENV{TEST_VERBOSE};

$st = stats();
is($st->{subscribers}, $N, "stats: still $N subscribers");
is($st->{slow_disconnects}, 0, 'stats: no slow disconnect');

$_->close for @c;
ok(SSETest::wait_until(sub { stats()->{subscribers} == 0 }, 10), 'stats: all subscribers gone after closing');
$t->finish;
done_testing;
