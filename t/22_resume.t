# Resuming a stream: Last-Event-ID (header) or last_event_id (query argument) resumes exactly,
# byte for byte, with no reset: the events missed while disconnected, then live events. A
# channel with retained events exists without subscribers (GET answers its history figures) and
# is forgotten by DELETE. A reconnection served by the other worker resumes exactly too.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use JSON::PP;
use SSETest;
use SSEExpect qw(frames);

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

# spread: port(1) is a reuseport listener the kernel spreads over both workers.
my $t = SSETest->new(spread => 1, server => $locations)->start;

# If the test dies midway, stop nginx before File::Temp removes its directory (and pid file).
END { local $?; $t->stop if $t }

my $PRE = ":ok\n\n";

# Publishes one event, checking the subscriber count its reply gives when $want_subs is defined;
# returns [id, frame, reply].
sub pub {
    my ($channel, $data, $name, $want_subs) = @_;
    my $ev = $t->publish_event("/pub?topic=$channel", $data, $name);
    is($ev->[2]{subscribers}, $want_subs, "publish to $channel: subscribers $want_subs") if defined $want_subs;
    return $ev;
}

# Waits until the stream's body is exactly $want (or 10 s pass); returns the body.
sub body_is {
    my ($s, $want, $label) = @_;
    $s->wait_body(length $want, 10);
    $s->drain(0.05) if length($s->body) == length $want;    # anything more that is on its way
    return is($s->body, $want, $label);
}

sub channel_subscribers {
    my ($ch) = @_;
    my $r = $t->request('GET', "/pub?topic=$ch");
    return -1 unless $r->{status} == 200;
    return decode_json($r->{body})->{subscribers};
}

my @shapes = (
    ['plain one', undef],
    ['{"k":"named"}', 'order.created'],
    ["multi\nline\n\nwith an empty line", undef],
    ['', 'empty.data'],
    ["caf\xc3\xa9 in UTF-8", 'x.y'],
);

# --- (1) five events, disconnect, ten missed, resume by header ---------------------------------
{
    my $s = $t->subscribe('/events?topics=r1');
    is($s->wait_body(length $PRE), $PRE, 'r1: the stream opens');
    my @first = map { pub('r1', "first $_ " . $shapes[$_ % 5][0], $shapes[$_ % 5][1], 1) } 0 .. 4;
    body_is($s, $PRE . frames(@first), 'r1: the first 5 events, exactly');
    my @ev = $s->events;
    my $last_seen = $ev[-1]{id};
    is($last_seen, $first[-1][0], 'r1: the last id seen is the 5th event');
    $s->close;
    ok(SSETest::wait_until(sub { channel_subscribers('r1') == 0 }, 10),
       'r1: after the disconnect the channel still answers GET, with 0 subscribers');

    my @missed = map { pub('r1', "missed $_ " . $shapes[$_ % 5][0], $shapes[$_ % 5][1], 0) } 0 .. 9;
    my $st0 = $t->stats;
    my $r = $t->resume('/events?topics=r1', $last_seen);
    is($r->status, 200, 'r1 resume: 200');
    my $want = $PRE . frames(@missed);
    body_is($r, $want, 'r1 resume: exactly the 10 missed events, byte for byte, in order, no reset');
    my $st1 = $t->stats;
    is($st1->{events_replayed} - $st0->{events_replayed}, 10, 'stats: events_replayed grew by exactly 10');
    is($st1->{resets} - $st0->{resets}, 0, 'stats: resets did not grow');

    my $live = pub('r1', 'live after the resume', 'live', 1);
    body_is($r, $want . $live->[1], 'r1 resume: then the live event, nothing else');

    # GET: the channel's history figures.
    is_deeply($t->channel_state('/pub?topic=r1'),
              {channel => 'r1', subscribers => 1, last_event_id => $live->[0], events_published => 16,
               retained => 16, oldest_id => $first[0][0], newest_id => $live->[0]},
              'GET r1: 1 subscriber, 16 published, 16 retained, oldest and newest ids');
    $r->close;
    ok(SSETest::wait_until(sub { channel_subscribers('r1') == 0 }, 10), 'r1: the resumed stream left');
    is_deeply($t->channel_state('/pub?topic=r1'),
              {channel => 'r1', subscribers => 0, last_event_id => $live->[0], events_published => 16,
               retained => 16, oldest_id => $first[0][0], newest_id => $live->[0]},
              'GET r1 with only history: its figures');

    my $d = $t->request('DELETE', '/pub?topic=r1');
    is($d->{status}, 200, 'DELETE r1: 200');
    is($d->{body}, qq({"channel":"r1","closed_subscribers":0}\n), 'DELETE r1: no stream to close');
    is($t->request('GET', '/pub?topic=r1')->{status}, 404, 'GET r1 after DELETE: 404 (the history is gone)');

    # A publish with nobody listening starts a fresh channel holding just that event.
    my $again = pub('r1', 'after the delete', undef, 0);
    is_deeply($t->channel_state('/pub?topic=r1'),
              {channel => 'r1', subscribers => 0, last_event_id => $again->[0], events_published => 1,
               retained => 1, oldest_id => $again->[0], newest_id => $again->[0]},
              'GET r1 after DELETE and one publish: a fresh channel with one retained event');
}

# A never-subscribed channel is unknown; its GET answers null ids only when nothing is retained.
is($t->request('GET', '/pub?topic=never')->{status}, 404, 'GET on a channel never used: 404');

# --- (2) the query argument; the header wins over it ------------------------------------------
{
    my @q = map { pub('r2', "q$_", $_ % 2 ? 'odd' : undef, 0) } 1 .. 6;

    my $s = $t->subscribe("/events?topics=r2&last_event_id=$q[2][0]");
    my $want = $PRE . frames(@q[3 .. 5]);
    body_is($s, $want, 'query last_event_id: exactly the 3 events after it');
    my $l1 = pub('r2', 'live 1', undef, 1);
    body_is($s, $want . $l1->[1], 'query last_event_id: then live');
    $s->close;

    $s = $t->resume("/events?topics=r2&last_event_id=$q[1][0]", $q[4][0]);
    $want = $PRE . frames($q[5], $l1);
    body_is($s, $want, 'header and query argument: the header wins');
    my $l2 = pub('r2', 'live 2', undef, 1);
    body_is($s, $want . $l2->[1], 'header and query argument: then live');
    $s->close;

    $s = $t->resume("/events?topics=r2&last_event_id=$q[3][0]", '');
    body_is($s, $PRE . frames(@q[4, 5], $l1, $l2), 'an empty header: the query argument applies');
    $s->close;

    # The query argument is URL-decoded.
    my $enc = join '', map { sprintf '%%%02X', ord } split //, $q[5][0];
    $s = $t->subscribe("/events?topics=r2&last_event_id=$enc");
    body_is($s, $PRE . frames($l1, $l2), "a percent-encoded query argument ($enc) is decoded");
    $s->close;
}

# --- resume at the newest id: no reset, nothing replayed, just live ----------------------------
{
    my @n = map { pub('r4', "n$_", undef, 0) } 1 .. 3;
    my $s = $t->resume('/events?topics=r4', $n[-1][0]);
    my $l = pub('r4', 'live at newest', undef, 1);
    body_is($s, $PRE . $l->[1], "resume at the channel's newest id: only the live event");
    $s->close;
    # Gone before the next stream is counted (the sanitizer build may take a moment to see it).
    ok(SSETest::wait_until(sub { channel_subscribers('r4') == 0 }, 10), 'r4: the stream left');

    # An id newer than the channel's newest but not newer than the node's newest.
    my $other = pub('r4other', 'elsewhere', undef, 0);
    $s = $t->resume('/events?topics=r4', $other->[0]);
    my $l2 = pub('r4', 'live after another channel', undef, 1);
    body_is($s, $PRE . $l2->[1], "resume at the node's newest id (another channel's): only the live event");
    $s->close;
}

# --- (3) the reconnection lands on the other worker ---------------------------------------------
# Which worker holds a new stream: the one whose subscriber count in /stats grew by one.
sub per_worker {
    my $st = $t->stats;
    return ($st->{subscribers}, {map { $_->{pid} => $_->{subscribers} } @{ $st->{workers} }});
}

sub open_tracked {
    my ($path, %o) = @_;
    ok(SSETest::wait_until(sub { $t->stats->{subscribers} == 0 }, 10), 'no stream is open before tracking one');
    my (undef, $before) = per_worker();
    my $s = $t->subscribe($path, port => $t->port(1), %o);
    my ($n, $after);
    SSETest::wait_until(sub { ($n, $after) = per_worker(); $n == 1 }, 10);
    my @grew = grep { ($after->{$_} // 0) == ($before->{$_} // 0) + 1 } keys %$after;
    return ($s, @grew == 1 ? $grew[0] : undef);
}

{
    my ($s, $pid1) = open_tracked('/events?topics=r3');
    ok(defined $pid1, "r3: the first stream is held by worker " . ($pid1 // '?'));
    my @first = map { pub('r3', "w$_", 'w', 1) } 1 .. 3;
    body_is($s, $PRE . frames(@first), 'r3: the first stream got 3 events');
    $s->close;
    ok(SSETest::wait_until(sub { channel_subscribers('r3') == 0 }, 10), 'r3: the first stream left');
    my @missed = map { pub('r3', "m$_", $_ % 2 ? undef : 'm', 0) } 1 .. 4;
    my $want = $PRE . frames(@missed);

    my ($r, $pid2, $tries);
    for my $try (1 .. 60) {
        $tries = $try;
        ($r, $pid2) = open_tracked('/events?topics=r3', headers => {'Last-Event-ID' => $first[-1][0]});
        last if defined $pid2 && defined $pid1 && $pid2 != $pid1;
        # Same worker: its body must be exact as well.
        $r->wait_body(length $want, 10);
        is($r->body, $want, "r3: resume on the same worker (try $try) is exact too") if $try <= 3;
        $r->close;
        undef $r;
    }
    diag("r3: the resume landed on the other worker after $tries tries");
    ok(defined $pid2 && $pid2 != $pid1, "r3: the resume is held by the other worker ($pid2 vs $pid1)");
    body_is($r, $want, 'r3: resume on the other worker: exactly the 4 missed events, no reset');
    my $live = pub('r3', 'live on the other worker', undef, 1);
    body_is($r, $want . $live->[1], 'r3: then live');
    $r->close;
}

$t->finish;
done_testing;
