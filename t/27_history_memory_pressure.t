# History under memory pressure: with the smallest zone (256k) and sse_history 100000, many
# ~1 KB events over several channels all publish (202): the oldest retained events over all
# channels are evicted to make room (history_evictions, one [warn] line), so what is retained is
# exactly the newest events; a resume from a channel's first id gets reset "evicted", then that
# channel's retained tail, then live. An event bigger than the zone is still refused with 507,
# and costs no history.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use JSON::PP;
use SSETest;
use SSEExpect qw(frame reset_frame);

my $t = SSETest->new(http => "    sse_shm_size 256k;\n", server => <<'CONF')->start;
        location = /events {
            sse_subscribe $arg_topics;
            sse_heartbeat off;
        }
        location = /pub {
            sse_history 100000;
            sse_publish $arg_topic;
        }
        location = /stats {
            sse_stats;
        }
CONF

END { local $?; $t->stop if $t }

my $PRE = ":ok\n\n";
my @CH = map { "m$_" } 0 .. 3;
my $WARN = qr/\[warn\].*sse: shared zone full, evicted \d+ retained events to make room; raise sse_shm_size/;

# A live subscriber on m1 all along: delivery is unaffected by the pressure.
my $live = $t->subscribe('/events?topics=m1');
is($live->wait_body(length $PRE), $PRE, 'the live stream on m1 opens');

my @published;    # [channel, id, frame], in publish order
my ($accepted, $sent) = (0, 0);
my $evictions_mid;
my $N = 480;
for my $k (0 .. $N - 1) {
    my $ch = $CH[$k % 4];
    my $name = $k % 3 ? undef : 'big';
    my $data = "k=$k on $ch " . ('0123456789abcdef' x 64);    # ~1 KB
    $sent++;
    my $r = $t->request('POST', "/pub?topic=$ch" . (defined $name ? "&event=$name" : ''), body => $data);
    if ($r->{status} == 202) {
        $accepted++;
        my $id = decode_json($r->{body})->{id};
        push @published, [$ch, $id, frame($id, $data, $name)];
    } else {
        diag("publish $k: $r->{status} $r->{body}");
    }
    $live->_fill(0) for 1 .. 3;
    $evictions_mid = $t->stats->{history_evictions} if $k == $N / 2;
}
is($accepted, $sent, "every one of the $sent publishes answered 202");

# The live stream got every m1 event exactly.
my @m1 = grep { $_->[0] eq 'm1' } @published;
$live->events(scalar @m1, 10);
is($live->body, $PRE . join('', map { $_->[2] } @m1), 'the live stream on m1 received every m1 event exactly');

my $st = $t->stats;
cmp_ok($evictions_mid, '>', 0, "history_evictions > 0 halfway ($evictions_mid)");
cmp_ok($st->{history_evictions}, '>', $evictions_mid, "history_evictions grew since ($st->{history_evictions})");
cmp_ok($st->{events_retained}, '<', scalar @published, "events_retained ($st->{events_retained}) < published (" . scalar(@published) . ')');
cmp_ok($st->{events_retained}, '>', 0, 'events_retained > 0');
is($st->{history_evictions}, @published - $st->{events_retained},
   'history_evictions == published - retained (nothing else removed any)');
is($st->{publishes_refused}, 0, 'no publish refused');

# Retained: exactly the newest R events over all channels.
my $R = $st->{events_retained};
my @tail = @published[@published - $R .. $#published];
my %want_n;
$want_n{ $_->[0] }++ for @tail;
my $g = $t->get_json('/pub?topic=' . join(',', @CH));
my ($sum, @got, @want) = (0);
for my $c (@{ $g->{channels} }) {
    $sum += $c->{retained};
    my @mine = grep { $_->[0] eq $c->{channel} } @tail;
    push @got, [$c->{channel}, $c->{retained}, $c->{oldest_id}, $c->{newest_id}];
    push @want, [$c->{channel}, scalar @mine, @mine ? ($mine[0][1], $mine[-1][1]) : (undef, undef)];
}
is($sum, $R, "the channels' retained counts sum to events_retained ($R)");
is_deeply(\@got, \@want, 'each channel retains exactly its events among the newest R published (oldest evicted first)')
    or diag explain [\@got, \@want];

my @warns = grep { /$WARN/ } split /\n/, $t->error_log;
is(scalar @warns, 1, 'the zone-full eviction was logged once, at [warn]') or diag(join "\n", @warns);

# Free some room first (DELETE forgets m3's history), so that nothing below has to evict.
{
    my $r = $t->request('DELETE', '/pub?topic=m3');
    is($r->{status}, 200, 'DELETE m3: 200');
    my $after = $t->stats;
    is($after->{events_retained}, $R - $want_n{m3}, "DELETE m3: its $want_n{m3} retained events are gone");
    is($after->{history_evictions}, $st->{history_evictions}, 'DELETE m3: not counted as evictions');
}

# Resume from m0's first id: reset evicted, then m0's retained tail, then live.
{
    my @m0 = grep { $_->[0] eq 'm0' } @published;
    my @m0_tail = grep { $_->[0] eq 'm0' } @tail;
    cmp_ok(scalar @m0_tail, '>', 0, 'm0 still retains events');
    cmp_ok(scalar @m0_tail, '<', scalar @m0, 'm0 lost events to the pressure');
    my $x = $m0[0][1];
    my $s = $t->resume('/events?topics=m0', $x);
    my $want = $PRE . reset_frame($x, 'evicted') . join('', map { $_->[2] } @m0_tail);
    $s->events(1 + @m0_tail, 10);
    is($s->body, $want, 'resume from m0\'s first id: reset evicted, then exactly the newest ' . scalar(@m0_tail)
                        . ' events of m0, contiguous, ending with the newest');
    my $r = $t->publish('/pub?topic=m0', 'live m0');
    $s->events(2 + @m0_tail, 10);
    is($s->body, $want . frame($r->{id}, 'live m0'), 'then live');
    $s->close;

    # A resume from the newest retained m0 event before the live one: exact, no reset.
    my $s2 = $t->resume('/events?topics=m0', $m0_tail[-1][1]);
    $s2->events(1, 10);
    is($s2->body, $PRE . frame($r->{id}, 'live m0'), 'resume from m0\'s newest retained: exact, no reset');
    $s2->close;
}

# One event bigger than the zone: 507, as before.
{
    my $before = $t->stats->{events_retained};
    my $r = $t->request('POST', '/pub?topic=m2', body => 'x' x (400 * 1024));
    is($r->{status}, 507, 'an event bigger than the zone: 507');
    is($r->{body}, "the event zone is full: the event was not stored\n", 'with the reason');
    my $after = $t->stats;
    is($after->{publishes_refused}, 1, 'publishes_refused == 1');
    is($after->{events_retained}, $before, 'a publish that cannot fit even in an empty history evicts nothing');
    my $ok = $t->request('POST', '/pub?topic=m2', body => 'small after the 507');
    is($ok->{status}, 202, 'a publish after the 507 is accepted');
    my @w = grep { /$WARN/ } split /\n/, $t->error_log;
    is(scalar @w, 1, 'still one zone-full [warn] line');
}

$live->close;
$t->finish;
done_testing;
