# History survives nginx -s reload: a subscriber that left before the reload resumes exactly,
# after it, every event published before and after the reload, no reset. Streams alive across a
# reload end (cleanly), their clients resume with their last id and, together with what they had
# received, get every published event exactly once, in order, byte for byte, while a publisher
# keeps publishing through the reload.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(sleep time);
use SSETest;
use SSEExpect qw(frame frames);

my $locations = <<'CONF';
        location = /events {
            sse_subscribe $arg_topics;
            sse_heartbeat off;
        }
        location = /pub {
            sse_history 5000;
            sse_publish $arg_topic;
        }
        location = /stats {
            sse_stats;
        }
CONF

my $t = SSETest->new(spread => 1, server => $locations)->start;

END { local $?; $t->stop if $t }

my $PRE = ":ok\n\n";

# Publishes one event to $channel; returns [id, frame, reply].
sub pub { my ($channel, @event) = @_; return $t->publish_event("/pub?topic=$channel", @event) }

# --- left before the reload, resumes after it ---------------------------------------------------
{
    my $s = $t->subscribe('/events?topics=rl');
    my @first = map { pub('rl', "first $_", $_ == 2 ? 'two' : undef) } 1 .. 3;
    $s->events(3, 10);
    is($s->body, $PRE . frames(@first), 'rl: the first 3 events');
    my $last = ($s->events)[-1]{id};
    $s->close;
    ok(SSETest::wait_until(sub { $t->get_json('/pub?topic=rl')->{subscribers} == 0 }, 10), 'rl: the stream left');
    my @before = map { pub('rl', "before reload $_", $_ % 2 ? 'odd' : undef) } 1 .. 4;
    my @old_workers = $t->worker_pids;
    $t->reload;
    isnt(join(' ', $t->worker_pids), join(' ', @old_workers), 'reloaded: new workers');
    # Until the old workers exit they may still accept connections on the reuseport listener.
    ok(SSETest::wait_until(sub { !grep { kill 0, $_ } @old_workers }, 10), 'the old workers exited');
    is_deeply([@{ $t->get_json('/pub?topic=rl') }{qw(subscribers retained oldest_id newest_id events_published)}],
              [0, 7, $first[0][0], $before[-1][0], 7], 'rl: GET after the reload: the history is still there');
    my @after = map { pub('rl', "after reload $_\nline 2") } 1 .. 4;
    cmp_ok($after[0][0], '>', $before[-1][0], 'ids keep increasing across the reload');
    my $r = $t->resume('/events?topics=rl', $last);
    my $want = $PRE . frames(@before, @after);
    $r->events(8, 10);
    is($r->body, $want, 'rl: resume after the reload: exactly the 8 missed events (4 before, 4 after), no reset');
    my $l = pub('rl', 'live');
    $r->events(9, 10);
    is($r->body, $want . $l->[1], 'rl: then live');
    $r->close;
}

# --- streams alive across a reload, a publisher all along --------------------------------------
{
    my @old;
    my $st;
    for my $round (1 .. 5) {
        push @old, $t->subscribe('/events?topics=rl2', port => $t->port(1)) for 1 .. 4;
        $st = $t->stats_until({subscribers => scalar @old}, 10);
        last if 2 == grep { $_->{subscribers} > 0 } @{ $st->{workers} };
    }
    is(scalar(grep { $_->{subscribers} > 0 } @{ $st->{workers} }), 2, 'rl2: both workers hold streams')
        or diag explain $st->{workers};
    my $marker = pub('rl2', 'marker');
    my %frame_of = ($marker->[0] => $marker->[1]);
    my @ids = ($marker->[0]);
    $_->wait_for_id($marker->[0]) for @old;

    my $log = $t->dir . '/publisher.log';
    my $stop = $t->dir . '/publisher.stop';
    my $end = time + 15;
    my $pid = $t->start_publisher(log => $log, pause => 0.004, next => sub {
        my ($n) = @_;
        return if -e $stop || time >= $end;
        return ($n, '/pub?topic=rl2' . ($n % 5 ? '' : '&event=fifth'), "ev-$n");
    });

    sleep 0.5;    # let events flow before the reload (not a correctness wait)
    my @old_workers = $t->worker_pids;
    $t->reload;
    my $ended = 0;
    for my $s (@old) { $ended++ if $s->wait_eof(10) }
    is($ended, scalar @old, 'rl2: every stream of the old workers ended');
    is(scalar(grep { $_->ended_cleanly } @old), scalar @old, 'rl2: cleanly (the zero-length chunk)');

    # The old workers accept connections on the reuseport listener until they act on the
    # master's QUIT (which nginx sends 100 ms after starting the new ones): wait until they exit.
    ok(SSETest::wait_until(sub { !grep { kill 0, $_ } @old_workers }, 10), 'rl2: the old workers exited');

    # Each client resumes with its last id, while the publisher goes on.
    my @last = map { my @e = $_->events; $e[-1]{id} } @old;
    my @resumed = map { $t->resume('/events?topics=rl2', $_, port => $t->port(1)) } @last;
    sleep 0.5;    # let events flow after the resume (not a correctness wait)
    open my $sfh, '>', $stop or die $!;
    close $sfh;
    waitpid($pid, 0);
    is($? >> 8, 0, 'rl2: the publisher exited normally');

    my @pubs = SSETest::read_publisher_log($log);
    cmp_ok(scalar @pubs, '>=', 50, 'rl2: at least 50 events were published (' . scalar(@pubs) . ')');
    is(scalar(grep { $_->{status} != 202 } @pubs), 0, 'rl2: every publish answered 202');
    for my $p (@pubs) {
        push @ids, $p->{id};
        $frame_of{ $p->{id} } = frame($p->{id}, "ev-$p->{n}", $p->{n} % 5 ? undef : 'fifth');
    }
    my $all = $PRE . join('', map { $frame_of{$_} } @ids);

    $_->wait_for_id($ids[-1], 15) for @resumed;
    my $ok = 0;
    for my $i (0 .. $#old) {
        my @oe = $old[$i]->events;
        my @re = $resumed[$i]->events;
        my $got = $old[$i]->body . join('', map { $_->{frame} } @re);
        my $reset = grep { !defined $_->{id} } @re;
        my $re_body_ok = $resumed[$i]->body eq $PRE . join('', map { $_->{frame} } @re);
        if ($got eq $all && !$reset && $re_body_ok) {
            $ok++;
        } else {
            is($got, $all, "rl2 stream $i: what it received before and after the reload ("
                           . scalar(@oe) . ' + ' . scalar(@re) . " events, resumed from $last[$i])");
            is($reset, 0, "rl2 stream $i: no reset");
        }
    }
    is(scalar(grep { !$_->eof } @resumed), scalar @resumed, 'rl2: every resumed stream is still open');
    is($ok, scalar @old, 'rl2: every client got every event exactly once, in order, across the reload and its resume');
    diag('rl2: events per old stream before the reload: ' . join(' ', map { scalar(my @e = $_->events) } @old));
    $_->close for @resumed;
}

is($t->stats->{resets}, 0, 'stats: no reset');

$t->finish;
done_testing;
