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
use JSON::PP;
use POSIX ();
use Time::HiRes qw(sleep time);
use SSETest;

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

sub frame {
    my ($id, $data, $name) = @_;
    my $f = "id: $id\n";
    $f .= "event: $name\n" if defined $name;
    $f .= join '', map { length $_ ? "data: $_\n" : "data:\n" } split /\n/, $data, -1;
    return "$f\n";
}

sub pub {
    my ($channel, $data, $name) = @_;
    my $r = $t->publish("/pub?topic=$channel" . (defined $name ? "&event=$name" : ''), $data);
    return [$r->{id}, frame($r->{id}, $data, $name)];
}

sub frames { join '', map { $_->[1] } @_ }

sub wait_for_id {
    my ($s, $id, $timeout) = @_;
    my $end = time + ($timeout // 10);
    while (time < $end) {
        my @e = $s->events;
        return 1 if @e && defined $e[-1]{id} && $e[-1]{id} >= $id;
        last if $s->eof;
        $s->events(@e + 1, 0.2);
    }
    return 0;
}

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
    my $r = $t->subscribe('/events?topics=rl', headers => {'Last-Event-ID' => $last});
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
    wait_for_id($_, $marker->[0]) for @old;

    my $log = $t->dir . '/publisher.log';
    my $stop = $t->dir . '/publisher.stop';
    my $pid = fork // die "fork: $!";
    if ($pid == 0) {
        open my $fh, '>', $log or POSIX::_exit(2);
        $fh->autoflush(1);
        my $end = time + 15;
        for (my $n = 0; !-e $stop && time < $end; $n++) {
            my $r = eval { $t->request('POST', '/pub?topic=rl2' . ($n % 5 ? '' : '&event=fifth'), body => "ev-$n") };
            my $status = $r ? $r->{status} : 0;
            my ($id) = $r ? ($r->{body} =~ /"id":"(\d+)"/) : ();
            printf $fh "%d %d %s\n", $n, $status, $id // '-';
            sleep 0.004;
        }
        close $fh;
        POSIX::_exit(0);    # never run the parent's destructors (they would stop nginx)
    }

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
    my @resumed = map { $t->subscribe('/events?topics=rl2', port => $t->port(1), headers => {'Last-Event-ID' => $_}) } @last;
    sleep 0.5;    # let events flow after the resume (not a correctness wait)
    open my $sfh, '>', $stop or die $!;
    close $sfh;
    waitpid($pid, 0);
    is($? >> 8, 0, 'rl2: the publisher exited normally');

    open my $lfh, '<', $log or die "$log: $!";
    my @pubs;
    while (<$lfh>) { my ($n, $status, $id) = split; push @pubs, [$n, $status, $id] }
    close $lfh;
    cmp_ok(scalar @pubs, '>=', 50, 'rl2: at least 50 events were published (' . scalar(@pubs) . ')');
    is(scalar(grep { $_->[1] != 202 } @pubs), 0, 'rl2: every publish answered 202');
    for my $p (@pubs) {
        push @ids, $p->[2];
        $frame_of{ $p->[2] } = frame($p->[2], "ev-$p->[0]", $p->[0] % 5 ? undef : 'fifth');
    }
    my $all = $PRE . join('', map { $frame_of{$_} } @ids);

    wait_for_id($_, $ids[-1], 15) for @resumed;
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
