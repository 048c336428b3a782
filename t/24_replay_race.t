# Events published while a resuming stream is being replayed: with a big history (2000 events
# of 1-2 KB) and a publisher child process publishing all along, the resumed stream receives
# every id after its position exactly once, byte for byte, contiguous, no gap, no duplicate,
# no reset, and stays open. Rounds on the default listener (on loopback the kernel takes a
# whole replay at once) and on a listener with sndbuf=64k (as docs/subscribing.md suggests to cap the
# kernel's share), where the replay takes many writes and live events arrive while it is still
# going on; with a fast reader and with a reader that pauses. First, on the sndbuf=64k
# listener, a replay of megabytes with no publish meanwhile must arrive whole.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use JSON::PP;
use POSIX ();
use Time::HiRes qw(sleep time);
use SSETest;
use SSEExpect qw(frame first_difference);

my $locations = <<'CONF';
        location = /events {
            sse_subscribe $arg_topics;
            sse_heartbeat off;
        }
        location = /pub {
            sse_history 2000;
            sse_publish $arg_topic;
        }
        location = /stats {
            sse_stats;
        }
CONF

# Port 1: the same locations with a fixed 64k socket send buffer, so that a replay of megabytes
# takes many writes.
my $t = SSETest->new(extra_ports => 1, http => <<"CONF", server => $locations)->start;
    client_max_body_size 8m;
    client_body_buffer_size 1m;
    server {
        listen 127.0.0.1:%%PORT1%% sndbuf=64k;
$locations
    }
CONF

END { local $?; $t->stop if $t }

my $PRE = ":ok\n\n";
my $HISTORY = 2000;

# The payload of the n-th event: 1-2 KB, recognisable.
sub payload { my ($n) = @_; return "n=$n " . ('abcdefghij' x (100 + ($n * 37) % 100)) }
sub payload_frame { my ($id, $n) = @_; return frame($id, payload($n)) }

my %n_of;    # id -> n
my @ids;     # every id published, in order
my $next_n = 0;

# Fill the history: batches of 100.
for my $b (1 .. $HISTORY / 100) {
    my @ns = map { $next_n++ } 1 .. 100;
    my $body = join '', map { "data: " . payload($_) . "\n\n" } @ns;
    my $r = $t->request('POST', '/pub?topic=race', body => $body, headers => {'Content-Type' => 'text/event-stream'});
    die "batch $b: $r->{status} $r->{body}" unless $r->{status} == 202;
    my $last = decode_json($r->{body})->{id};
    my $id = $last - 99;
    for my $n (@ns) { $n_of{$id} = $n; push @ids, $id; $id++ }
}
is(scalar(grep { $ids[$_] == $ids[$_ - 1] + 1 } 1 .. $#ids), $#ids, "$HISTORY events published with contiguous ids");
my $g = $t->get_json('/pub?topic=race');
is_deeply([@$g{qw(retained oldest_id newest_id)}], [$HISTORY, $ids[0], $ids[-1]], "GET: $HISTORY retained, oldest and newest");

# The publisher: $count single publishes of events n = $first_n, ..., logging "n status id time" per line.
sub start_publisher {
    my ($log, $count, $first_n) = @_;
    return $t->start_publisher(log => $log, pause => 0.002, next => sub {
        my ($i) = @_;
        return if $i >= $count;
        return ($first_n + $i, '/pub?topic=race', payload($first_n + $i));
    });
}

# Reads $s until $done->() is true; gives up when no byte has arrived for $stall seconds (a
# stalled stream) or at $limit. Calls $each->() after each read.
sub read_until {
    my ($s, $done, %o) = @_;
    my $end = time + ($o{limit} // 30);
    my $last_growth = time;
    my $len = length($s->raw // '');
    while (time < $end) {
        return 1 if $done->();
        $s->_fill(0.1) or return $done->();
        my $now_len = length($s->raw // '');
        if ($now_len != $len) { $len = $now_len; $last_growth = time }
        $o{each}->() if $o{each};
        return $done->() if time - $last_growth > ($o{stall} // 5) && (!$o{may_stall} || $o{may_stall}->());
    }
    return $done->();
}

# A replay through the small send buffer, nothing published meanwhile: it arrives whole.
{
    my $x = $ids[-1500];
    my $s = $t->resume('/events?topics=race', $x, port => $t->port(1), timeout => 10);
    my $want = $PRE . join('', map { payload_frame($_, $n_of{$_}) } @ids[-1499 .. -1]);
    my $ok = read_until($s, sub { length($s->body) >= length $want }, stall => 5);
    diag(sprintf 'sndbuf=64k replay with no publish: %d of %d bytes arrived (raw %d)',
                 length($s->body), length($want), length($s->raw // '')) unless $ok;
    is(length($s->body), length($want), 'sndbuf=64k listener: a replay of 1499 events (2+ MB) arrives whole with no publish meanwhile');
    ok($s->body eq $want, 'sndbuf=64k listener: and byte for byte');
    ok(!$s->eof, 'sndbuf=64k listener: the stream stays open');
    $s->close;
}

my @rounds = (
    # [label, how far behind the newest the position is, reader pauses, port index]
    ['default listener, 1500 behind, fast reader', 1500, 0, 0],
    ['default listener, 1000 behind, pausing reader', 1000, 1, 0],
    ['sndbuf=64k, 1500 behind, fast reader', 1500, 0, 1],
    ['sndbuf=64k, 1000 behind, pausing reader', 1000, 1, 1],
    ['sndbuf=64k, 200 behind, fast reader', 200, 0, 1],
);
my $PER_ROUND = 300;
my $overlap_total = 0;

for my $ri (0 .. $#rounds) {
    my ($label, $behind, $pausing, $port_index) = @{ $rounds[$ri] };
    my $log = $t->dir . "/publisher.$ri.log";
    my $pid = start_publisher($log, $PER_ROUND, $next_n);
    # Let it get going.
    SSETest::wait_until(sub { my @l = SSETest::read_publisher_log($log); @l >= 5 }, 10);
    my $newest = $t->get_json('/pub?topic=race')->{newest_id};
    my $x = $newest - $behind;
    my $t_connect = time;
    my $s = $t->resume('/events?topics=race', $x, port => $t->port($port_index), timeout => 10);
    is($s->status, 200, "$label: 200");

    # Read: the pausing reader sleeps after each read during its first second.
    my $t_caught_up;
    my $child_done = 0;
    my $last_id = '';
    my $last_event_is = sub { my @e = $s->events; return @e && defined $e[-1]{id} && $e[-1]{id} eq $_[0] };
    read_until($s, sub { $child_done && $last_event_is->($last_id) }, limit => 40, stall => 5,
               may_stall => sub { $child_done },
               each => sub {
                   my @e = $s->events;
                   $t_caught_up //= time if @e && defined $e[-1]{id} && $e[-1]{id} >= $newest;
                   sleep 0.01 if $pausing && time < $t_connect + 1;
                   if (!$child_done && waitpid($pid, POSIX::WNOHANG()) == $pid) {
                       $child_done = 1;
                       is($? >> 8, 0, "$label: the publisher exited normally");
                       my @l = SSETest::read_publisher_log($log);
                       $last_id = $l[-1]{id};
                   }
               });
    if (!$child_done) {
        waitpid($pid, 0);
        is($? >> 8, 0, "$label: the publisher exited normally");
    }
    my @l = SSETest::read_publisher_log($log);
    is(scalar @l, $PER_ROUND, "$label: the publisher published $PER_ROUND events");
    is(scalar(grep { $_->{status} == 202 } @l), $PER_ROUND, "$label: every publish answered 202");
    for my $p (@l) { $n_of{ $p->{id} } = $p->{n}; push @ids, $p->{id} }
    $next_n += $PER_ROUND;
    my $during = grep { $_->{when} > $t_connect && $_->{when} < ($t_caught_up // time) } @l;
    $overlap_total += $during;
    diag(sprintf "%s: %d publishes answered between the connect and the replay reaching the position's newest id (%.3fs)",
         $label, $during, ($t_caught_up // time) - $t_connect);

    # Every id after x exactly once, in order, byte for byte.
    my @want_ids = grep { $_ > $x } @ids;
    my @ev = $s->events;
    my @got_ids = map { $_->{id} // 'none' } @ev;
    is(scalar(grep { !defined $_->{id} } @ev), 0, "$label: no event without an id (no reset)");
    is(scalar @got_ids, scalar @want_ids, "$label: " . scalar(@want_ids) . ' events received');
    my $difference = first_difference(\@got_ids, \@want_ids);
    ok(!defined $difference, "$label: the ids are exactly those after the position, in order")
        or diag($difference);
    is(scalar(grep { $got_ids[$_] eq 'none' || $got_ids[$_ - 1] eq 'none' || $got_ids[$_] != $got_ids[$_ - 1] + 1 } 1 .. $#got_ids), 0,
       "$label: contiguous ids, no gap, no duplicate");
    ok($s->body eq $PRE . join('', map { exists $n_of{$_} ? payload_frame($_, $n_of{$_}) : "missing $_" } @want_ids),
       "$label: the whole body byte for byte: the preamble, then every event after the position");
    ok(!$s->eof, "$label: the stream is still open");
    $s->close;
}
cmp_ok($overlap_total, '>', 0, 'events were published while replays were going on');

my $st = $t->stats;
is($st->{events_retained}, $HISTORY, "stats: events_retained == $HISTORY (the history bound)");
is($st->{resets}, 0, 'stats: no reset');
is($st->{slow_disconnects}, 0, 'stats: no slow disconnect');

$t->finish;
done_testing;
