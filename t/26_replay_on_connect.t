# sse_replay n: a first connect (no position) gets the n most recent retained events of its
# channels, merged in publish order, then live; fewer when fewer are retained; not applied when a
# position is given. sse_history 0 on the publishing location keeps nothing: GET retained 0,
# a resume after missed events gets reset "evicted". sse_history_ttl: expired events are not
# replayed, a resume from before them gets reset "evicted", GET retained 0.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(sleep time);
use SSETest;
use SSEExpect qw(reset_frame frames);

my $t = SSETest->new(server => <<'CONF')->start;
        location = /events {
            sse_subscribe $arg_topics;
            sse_heartbeat off;
        }
        location = /replay {
            sse_subscribe $arg_topics;
            sse_heartbeat off;
            sse_replay 5;
        }
        location = /pub {
            sse_history 10;
            sse_publish $arg_topic;
        }
        location = /pub0 {
            sse_history 0;
            sse_publish $arg_topic;
        }
        location = /ttl-events {
            sse_subscribe $arg_topics;
            sse_heartbeat off;
            sse_replay 5;
            sse_history_ttl 1s;
        }
        location = /ttl-pub {
            sse_history_ttl 1s;
            sse_publish $arg_topic;
        }
        location = /stats {
            sse_stats;
        }
CONF

END { local $?; $t->stop if $t }

my $PRE = ":ok\n\n";

# Publishes one event to $channel at the publish location $loc; returns [id, frame, reply].
sub pub { my ($loc, $channel, @event) = @_; return $t->publish_event("$loc?topic=$channel", @event) }

# Waits for $n events, then checks the exact body.
sub body_ok {
    my ($s, $n, $want, $label) = @_;
    $s->events($n, 10);
    return is($s->body, $want, $label);
}

# --- sse_replay 5 -----------------------------------------------------------------------------
# 8 publishes over a and b, one to both: a1 b1 a2 ab3 b2 a4 b3 a5.
my %ev;
my @order = (['a', 'a1'], ['b', 'b1'], ['a', 'a2'], ['a,b', 'ab3'], ['b', 'b2'], ['a', 'a4'], ['b', 'b3'], ['a', 'a5']);
my $i = 0;
for my $o (@order) {
    $ev{ $o->[1] } = pub('/pub', $o->[0], "data of $o->[1]", $i++ % 2 ? 'named' : undef);
}
my @by = map { $ev{$_} } qw(a1 b1 a2 ab3 b2 a4 b3 a5);

{
    my %cases = (
        'a,b'   => [qw(ab3 b2 a4 b3 a5)],    # the last 5 of 8, merged, in id order
        'b,a,c' => [qw(ab3 b2 a4 b3 a5)],    # an empty channel adds nothing
        'a'     => [qw(a1 a2 ab3 a4 a5)],    # a has exactly 5
        'b'     => [qw(b1 ab3 b2 b3)],       # b has 4: fewer than 5
        'c'     => [],                       # nothing
    );
    my %s;
    for my $topics (sort keys %cases) {
        my $s = $t->subscribe("/replay?topics=$topics");
        my @want = map { $ev{$_} } @{ $cases{$topics} };
        body_ok($s, scalar @want, $PRE . frames(@want),
                "sse_replay 5 on $topics: exactly " . join(' ', @{ $cases{$topics} }) . ' in id order');
        $s{$topics} = [$s, $PRE . frames(@want)];
    }
    # Live, after the replay; c included.
    my $la = pub('/pub', 'a,c', 'live to a and c');
    for my $topics (sort keys %s) {
        my ($s, $want) = @{ $s{$topics} };
        my $gets = $topics =~ /a|c/;
        $want .= $la->[1] if $gets;
        my $n = () = $want =~ /^id: /mg;
        body_ok($s, $n, $want, "sse_replay 5 on $topics: then " . ($gets ? 'the live event' : 'nothing live'));
        $s->close;
    }
    push @by, $la;

    # sse_replay does not apply when a position is given: from the newest id, nothing.
    my $s = $t->resume('/replay?topics=a,b', $la->[0]);
    my $l = pub('/pub', 'b', 'live to b');
    body_ok($s, 1, $PRE . $l->[1], 'sse_replay with a position at the newest id: nothing replayed, live only');
    $s->close;
    # From an older position: exactly the events after it, not the last 5.
    $s = $t->resume('/replay?topics=a,b', $ev{b1}[0]);
    my @want = (@by[2 .. $#by], $l);
    body_ok($s, scalar @want, $PRE . frames(@want),
            'sse_replay with an older position: every event after it (' . scalar(@want) . '), not 5');
    $s->close;
    # A location without sse_replay: nothing on a first connect.
    $s = $t->subscribe('/events?topics=a,b');
    my $l2 = pub('/pub', 'a', 'live to a');
    body_ok($s, 1, $PRE . $l2->[1], 'without sse_replay a first connect gets no history');
    $s->close;
}

# --- sse_history 0 on the publishing location ----------------------------------------------------
{
    my $before = pub('/pub', 'other', 'a position before z0 events');
    my $keeper = $t->subscribe('/events?topics=z');    # keeps channel z in existence
    my @z = map { pub('/pub0', 'z', "z$_") } 1 .. 3;
    body_ok($keeper, 3, $PRE . frames(@z), 'history 0: the live subscriber still gets every event');
    is_deeply($t->channel_state('/pub?topic=z'),
              {channel => 'z', subscribers => 1, last_event_id => $z[-1][0], events_published => 3,
               retained => 0, oldest_id => undef, newest_id => undef},
              'history 0: GET z: 3 published, 0 retained, null oldest and newest ids');
    # Nobody listening: nothing retained, the channel is unknown.
    my $r = $t->publish('/pub0?topic=z-nobody', 'lost');
    is($r->{subscribers}, 0, 'history 0, nobody listening: subscribers 0');
    is($t->channel_state('/pub?topic=z-nobody')->{status}, 404, 'history 0, nobody listening: GET 404, nothing retained');

    # Resume after missing z1..z3 (never kept): reset evicted, nothing replayed, then live.
    my $s = $t->resume('/events?topics=z', $before->[0]);
    my $l = pub('/pub0', 'z', 'z live 1');
    body_ok($s, 2, $PRE . reset_frame($before->[0], 'evicted') . $l->[1],
            'history 0: resume after missed events: reset evicted, nothing replayed, then live');
    $s->close;
    # Resume having missed nothing (the position is z's newest; the keeper keeps z existing):
    # no reset, nothing replayed, live only.
    $s = $t->resume('/events?topics=z', $l->[0]);
    my $l2 = pub('/pub0', 'z', 'z live 2');
    body_ok($s, 1, $PRE . $l2->[1], 'history 0: resume with nothing missed (channel kept by a subscriber): no reset, live only');
    $s->close;
    # sse_replay on a channel that keeps nothing: nothing.
    $s = $t->subscribe('/replay?topics=z');
    my $l3 = pub('/pub0', 'z', 'z live 3');
    body_ok($s, 1, $PRE . $l3->[1], 'history 0: sse_replay has nothing to replay');
    $s->close;
    body_ok($keeper, 6, $PRE . frames(@z, $l, $l2, $l3), 'history 0: the keeper got every event once');
    $keeper->close;
}

# --- sse_history_ttl 1s --------------------------------------------------------------------------
{
    my $before = pub('/ttl-pub', 'other', 'a position before the ttl events');
    my $keeper = $t->subscribe('/events?topics=tt');    # keeps channel tt in existence
    my @tt = map { pub('/ttl-pub', 'tt', "tt$_") } 1 .. 3;
    my @lone = map { pub('/ttl-pub', 'tt-lone', "lone$_") } 1 .. 2;    # no subscriber
    my $t_published = time;
    # At once: all retained and replayed.
    my $s = $t->subscribe('/ttl-events?topics=tt');
    body_ok($s, 3, $PRE . frames(@tt), 'ttl: before it expires, sse_replay sends the 3 events');
    $s->close;
    $s = $t->resume('/ttl-events?topics=tt', $before->[0]);
    body_ok($s, 3, $PRE . frames(@tt), 'ttl: before it expires, a resume gets the 3 events, no reset');
    $s->close;
    my $fresh = time - $t_published < 0.9;
    is_deeply([@{ $t->channel_state('/pub?topic=tt') }{qw(retained oldest_id newest_id)}], [3, $tt[0][0], $tt[-1][0]],
              'ttl: GET tt before expiry: 3 retained') if $fresh;
    is_deeply([@{ $t->channel_state('/pub?topic=tt-lone') }{qw(subscribers retained)}], [0, 2], 'ttl: GET tt-lone before expiry: 2 retained')
        if time - $t_published < 0.9;
    diag('ttl: the checks before expiry ran late, skipped') unless $fresh;

    sleep 2.5;    # the ttl is 1s: this wait is the point of the test
    is_deeply($t->channel_state('/pub?topic=tt'),
              {channel => 'tt', subscribers => 1, last_event_id => $tt[-1][0], events_published => 3,
               retained => 0, oldest_id => undef, newest_id => undef},
              'ttl: GET tt after expiry: retained 0, null ids');
    is($t->channel_state('/pub?topic=tt-lone')->{status}, 404, 'ttl: GET tt-lone (no subscriber) after expiry: 404');

    my $resumed = $t->resume('/ttl-events?topics=tt', $before->[0]);
    my $first = $t->subscribe('/ttl-events?topics=tt');
    $resumed->events(1, 10);
    my $l = pub('/ttl-pub', 'tt', 'tt live');
    body_ok($resumed, 2, $PRE . reset_frame($before->[0], 'evicted') . $l->[1],
            'ttl: after expiry a resume from before them: reset evicted, then live');
    body_ok($first, 1, $PRE . $l->[1], 'ttl: after expiry sse_replay sends none of them, then live');
    body_ok($keeper, 4, $PRE . frames(@tt, $l), 'ttl: the keeper got every event once');
    $_->close for $resumed, $first, $keeper;
}

$t->finish;
done_testing;
