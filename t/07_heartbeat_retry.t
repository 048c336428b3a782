# Heartbeats on idle streams (exact bytes, timing, none while events flow, none when off) and
# the preamble with and without sse_retry.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use SSETest;

# Upper time bounds stretch under the sanitizer build.
my $SLOW = $ENV{SSE_SANITIZED} ? 5 : 1;

my $t = SSETest->new(server => <<'CONF')->start;
        location = /hb {
            sse_subscribe $arg_topics;
            sse_heartbeat 1s;
        }
        location = /off {
            sse_subscribe $arg_topics;
            sse_heartbeat off;
        }
        location = /retry {
            sse_subscribe $arg_topics;
            sse_heartbeat off;
            sse_retry 2500ms;
        }
        location = /plain {
            sse_subscribe $arg_topics;
        }
        location = /pub {
            sse_publish $arg_topic;
        }
        location /inherit/ {
            sse_heartbeat 1s;
            location = /inherit/stream {
                sse_subscribe $arg_topics;
            }
        }
CONF

# If the test dies midway, stop nginx before File::Temp removes its directory (and pid file).
END { local $?; $t->stop if $t }

my $PRE = ":ok\n\n";
my $HB = ": heartbeat\n\n";

# Reads until the body is $want long or $limit seconds from $since passed; returns the time the
# body reached that length (or undef).
sub body_reaches {
    my ($s, $len, $since, $limit) = @_;
    while (length($s->body) < $len && time < $since + $limit) {
        $s->_fill(0.01) or last;
    }
    return length($s->body) >= $len ? time : undef;
}

# --- Preambles ------------------------------------------------------------------------------
{
    my $p = $t->subscribe('/plain?topics=pre');
    my $r = $t->subscribe('/retry?topics=pre');
    $_->drain(0.5) for $p, $r;
    is($p->body, ":ok\n\n", 'no sse_retry: the body is exactly ":ok\n\n"');
    is($r->body, ":ok\nretry: 2500\n\n", 'sse_retry 2500ms: ":ok\nretry: 2500\n\n"');
    my $ev = $t->publish('/pub?topic=pre', 'x');
    $_->events(1, 5) for $p, $r;
    is($r->body, ":ok\nretry: 2500\n\nid: $ev->{id}\ndata: x\n\n", 'retry is sent once, before the first event');
    is($p->body, ":ok\n\nid: $ev->{id}\ndata: x\n\n", 'no retry line before the first event either');
    $_->close for $p, $r;
}

# --- An idle stream gets a heartbeat after ~1 s, then every ~1 s ----------------------------
my @idle;
{
    my $t0 = time;
    my $s = $t->subscribe('/hb?topics=idle');
    my $inh = $t->subscribe('/inherit/stream?topics=idle2');
    my $at_pre = body_reaches($s, length $PRE, $t0, 2 * $SLOW);
    ok($at_pre, 'preamble arrived');
    is($s->body, $PRE, 'preamble exact');

    # Nothing more before 0.8 s.
    while (time < $t0 + 0.8) { $s->_fill(0.01); $inh->_fill(0) }
    is($s->body, $PRE, 'no heartbeat before 0.8 s');
    is($inh->body, $PRE, 'inherited: no heartbeat before 0.8 s');

    my $at1 = body_reaches($s, length($PRE . $HB), $t0, 2.5 * $SLOW);
    ok($at1, 'a heartbeat arrived');
    is($s->body, $PRE . $HB, 'exact bytes: the heartbeat comment appended after the preamble');
    my $d1 = ($at1 // 99) - $t0;
    cmp_ok($d1, '>=', 0.8, 'first heartbeat not before 0.8 s');
    cmp_ok($d1, '<=', 1.6 * $SLOW, 'first heartbeat by 1.6 s');

    my $at2 = body_reaches($s, length($PRE . $HB . $HB), $t0, 4 * $SLOW);
    ok($at2, 'a second heartbeat arrived');
    is($s->body, $PRE . $HB . $HB, 'exact bytes after the second heartbeat');
    my $gap = ($at2 // 99) - ($at1 // 0);
    cmp_ok($gap, '>=', 0.7, 'second heartbeat ~1 s after the first (not before 0.7 s)');
    cmp_ok($gap, '<=', 1.6 * $SLOW, 'second heartbeat ~1 s after the first (by 1.6 s)');
    is_deeply([$s->comments], ['ok', ' heartbeat', ' heartbeat'], 'the comments are the preamble and two heartbeats');
    is(scalar($s->events), 0, 'heartbeats are not events');

    ok(body_reaches($inh, length($PRE . $HB), $t0, 4 * $SLOW), 'inherited sse_heartbeat: a heartbeat arrived');
    like($inh->body, qr/\A\Q$PRE\E(?:\Q$HB\E)+\z/, 'inherited sse_heartbeat: exact bytes');
    $_->close for $s, $inh;
}

# --- Events every 300 ms keep the stream busy: no heartbeat; then silence brings one back ----
{
    my $s = $t->subscribe('/hb?topics=busy');
    is($s->wait_body(length $PRE), $PRE, 'busy stream: preamble');
    my $expected = $PRE;
    my $t0 = time;
    my $n = 0;
    while (time < $t0 + 2.7) {
        $n++;
        my $r = $t->publish('/pub?topic=busy', "tick $n");
        $expected .= "id: $r->{id}\ndata: tick $n\n\n";
        my $next = $t0 + 0.3 * $n;
        while (time < $next) { $s->_fill(0.01) }
    }
    $s->events($n, 5);
    cmp_ok($n, '>=', 8, "published $n events 300 ms apart");
    is(scalar($s->events), $n, "busy stream: got the $n events");
    is($s->body, $expected, 'busy stream: no heartbeat between events (exact body)');
    unlike($s->body, qr/heartbeat/, 'busy stream: no heartbeat comment');

    # Once idle, heartbeats resume about 1 s after the last event.
    my $quiet = time;
    my $at = body_reaches($s, length($expected . $HB), $quiet, 2.5 * $SLOW);
    ok($at, 'busy stream gone idle: a heartbeat arrives');
    is($s->body, $expected . $HB, 'busy stream gone idle: exact bytes');
    $s->close;
}

# --- sse_heartbeat off: nothing within 2.5 s ------------------------------------------------
{
    my $s = $t->subscribe('/off?topics=quiet');
    my $r = $t->subscribe('/retry?topics=quiet');
    my $end = time + 2.5;
    while (time < $end) { $s->_fill(0.02); $r->_fill(0.02) }
    is($s->body, $PRE, 'sse_heartbeat off: only the preamble after 2.5 s');
    is($r->body, ":ok\nretry: 2500\n\n", 'sse_heartbeat off with sse_retry: only the preamble after 2.5 s');
    ok(!$s->eof && !$r->eof, 'the quiet streams are still open');
    $_->close for $s, $r;
}

$t->finish;
done_testing;
