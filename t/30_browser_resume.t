# Resume with real clients: a page in Debian's Chromium (driven by playwright-core) and the
# `eventsource` npm package under node both follow one channel with `EventSource` while events
# are published every ~40 ms, and the server ends their streams several times: DELETE on the
# channel, `nginx -s reload`, and a DELETE immediately followed by a reload. Each client
# reconnects by itself after `retry: 200` with Last-Event-ID; the module replays what it missed
# (a DELETE forgets the channel's history, but the events published after it are retained by the
# new channel, and the clients' positions are exact). In the end each client received exactly the
# published sequence: every event once, in order, with the ids the publishes answered, and no
# reset event. The access log shows each client's streams and the Last-Event-ID each one sent.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use JSON::PP;
use Time::HiRes qw(sleep time);
use SSETest;
use SSEExpect qw(first_difference);

my $t = SSETest->new(
    http => q{    log_format resume '$arg_client "$http_last_event_id" $status';},
    server => <<'CONF');
        location = /events {
            sse_subscribe $arg_topics;
            sse_retry 200ms;
            sse_heartbeat off;
            access_log %%DIR%%/logs/events.log resume;
        }
        location = /pub {
            sse_publish $arg_topic;
            sse_history 100;
        }
        location = /stats { sse_stats; }
        location / { root %%DIR%%/html; }
CONF
my $dir = $t->dir;
mkdir "$dir/html" or die $!;
chmod 0755, "$dir/html";
open my $hfh, '>', "$dir/html/resume.html" or die $!;
print $hfh <<'HTML';
<!doctype html>
<meta charset="utf-8">
<title>resume</title>
<script>
  const topics = new URLSearchParams(location.search).get('topics');
  const source = new EventSource('/events?client=browser&topics=' + encodeURIComponent(topics));
  window.sse = { source, got: [], resets: [], opens: 0, open_at: [], errors: 0, ended: false };
  source.onopen = () => { window.sse.opens++; window.sse.open_at.push(window.sse.got.length); };
  source.onerror = () => { window.sse.errors++; };
  source.onmessage = (e) => {
    window.sse.got.push([e.lastEventId, e.data]);
    if (e.data === 'end') window.sse.ended = true;
  };
  source.addEventListener('reset', (e) => { window.sse.resets.push(e.data); });
</script>
HTML
close $hfh;
$t->start;

my $port = $t->port;
my %clients = (
    browser => { cmd => "node $FindBin::Bin/browser/resume_page.js 'http://127.0.0.1:$port/resume.html?topics=seq'" },
    eventsource => { cmd => "node $FindBin::Bin/browser/resume_eventsource.js 'http://127.0.0.1:$port/events?client=eventsource&topics=seq'" },
);
my @names = sort keys %clients;

# Both clients open their streams.
$ENV{SSE_CLIENT_TIMEOUT} = $ENV{SSE_SANITIZED} ? 90 : 40;
for my $name (@names) {
    my $c = $clients{$name};
    $c->{err} = "$dir/$name.stderr";
    $c->{pid} = open($c->{fh}, '-|', "$c->{cmd} 2>$c->{err}") or die "$name: $!";
}
for my $name (@names) {
    my $line = eval {
        local $SIG{ALRM} = sub { die "timeout\n" };
        alarm 30;
        my $l = readline $clients{$name}{fh};
        alarm 0;
        $l;
    } // '';
    alarm 0;
    is($line, "ready\n", "$name: the stream opened") or diag(slurp($clients{$name}{err}));
}
my $st = $t->stats_until({subscribers => 2}, 10);
is($st->{subscribers}, 2, 'both streams are subscribed');

# The data of the publisher's event n ("end" for its last one).
sub data_of { my ($n) = @_; return $n eq 'end' ? 'end' : $n % 7 == 3 ? "ev-$n\nsecond line of $n" : "ev-$n" }

# The publisher: a child process publishing "ev-N" (every 7th with a second line) every 40 ms
# until told to stop, then "end"; it writes one line per publish: "<n> <status> <id> <time>".
my $log = "$dir/publisher.log";
my $stop = "$dir/publisher.stop";
my $end = time + ($ENV{SSE_SANITIZED} ? 60 : 30);
my $ended = 0;
my $pid = $t->start_publisher(log => $log, pause => 0.04, next => sub {
    my ($n) = @_;
    return if $ended;
    $ended = -e $stop || time > $end;
    my $label = $ended ? 'end' : $n;
    return ($label, '/pub?topic=seq', data_of($label));
});

sub published {
    open my $fh, '<', $log or return 0;
    my @lines = <$fh>;
    return scalar @lines;
}
sub wait_published {
    my ($n) = @_;
    SSETest::wait_until(sub { published() >= $n }, $ENV{SSE_SANITIZED} ? 30 : 10)
        or die "the publisher did not reach $n events";
}
# Both clients are back: two streams, on live workers only (after a reload the old workers' streams
# may still be counted for a moment).
sub wait_reconnected {
    my ($what) = @_;
    sleep 0.3;    # past the 200 ms retry
    my $ok = SSETest::wait_until(sub {
        my $s = $t->stats;
        my %live = map { $_ => 1 } $t->worker_pids;
        return $s->{subscribers} == 2 && !grep { $_->{subscribers} && !$live{$_->{pid}} } @{ $s->{workers} };
    }, 10);
    ok($ok, "$what: both clients reconnected") or diag explain $t->stats;
}
sub delete_channel {
    my ($what) = @_;
    my $r = $t->request('DELETE', '/pub?topic=seq');
    is($r->{status} . ' ' . $r->{body}, qq(200 {"channel":"seq","closed_subscribers":2}\n),
       "$what: DELETE closed both streams");
}

my @disruptions = (
    [8, 'DELETE', sub { delete_channel('DELETE') }],
    [20, 'reload', sub { $t->reload }],
    [32, 'DELETE then reload', sub { delete_channel('DELETE then reload'); $t->reload }],
    [44, 'second reload', sub { $t->reload }],
    [54, 'second DELETE', sub { delete_channel('second DELETE') }],
);
for my $d (@disruptions) {
    my ($at, $what, $code) = @$d;
    wait_published($at);
    $code->();
    wait_reconnected($what);
}
wait_published(published() + 6);
open my $sfh, '>', $stop or die $!;
close $sfh;
waitpid($pid, 0);
is($? >> 8, 0, 'the publisher exited normally');

my @pubs = map { {%$_, data => data_of($_->{n})} } SSETest::read_publisher_log($log);
my @refused = grep { $_->{status} != 202 } @pubs;
is(scalar @refused, 0, 'every publish answered 202') or diag explain \@refused;
is(scalar(grep { $pubs[$_]{id} > $pubs[$_ - 1]{id} } 1 .. $#pubs), $#pubs, 'published ids increase');
my @want = map { [$_->{id}, $_->{data}] } @pubs;
my %published_id = map { $_->{id} => 1 } @pubs;
diag(scalar(@pubs) . ' events published');

# What each client received.
my %got;
for my $name (@names) {
    my $c = $clients{$name};
    my $out = do { local $/; readline $c->{fh} } // '';
    close $c->{fh};
    is($? >> 8, 0, "$name: the client exited normally") or diag($out, slurp($c->{err}));
    my ($line) = $out =~ /^(\{.*\})$/m;
    my $r = eval { decode_json($line // '') } // {};
    $got{$name} = $r;
    ok($r->{ended}, "$name: received the last event") or diag($out, slurp($c->{err}));
    is_deeply($r->{page_errors} // [], [], "$name: no error on the page") if $name eq 'browser';
    my $ok = is_deeply($r->{got}, \@want, "$name: received exactly the published sequence: every event once, in order, with its id");
    diag(first_difference($r->{got} || [], \@want, sub { "$_[0][0] " . encode_json($_[0][1]) }) // 'no difference') unless $ok;
    is_deeply($r->{resets}, [], "$name: no reset event");
    # Each disruption ended the client's stream (checked above: the DELETE closed it, or after the
    # reload it is back on a new worker), so it reconnected at least once per disruption.
    cmp_ok($r->{opens} // 0, '>=', 1 + @disruptions, "$name: the stream opened at least " . (1 + @disruptions) . ' times');
    diag("$name: $r->{opens} opens, $r->{errors} error events") if defined $r->{opens};
}

$st = $t->stats;
is($st->{resets}, 0, 'stats: no reset sent');
cmp_ok($st->{events_replayed} // 0, '>', 0, 'stats: events were replayed from history');
diag("stats: events_replayed $st->{events_replayed}") if defined $st->{events_replayed};

# The access log has one line per stream (written when it ended): each client's first stream sent no
# Last-Event-ID, each later one the id of the last event the client had received before it reconnected
# (the clients noted how many events they had at each 'open').
$t->stop;
my %streams;
for (split /\n/, slurp("$dir/logs/events.log")) {
    my ($client, $last_id, $status) = /^(\S+) "([^"]*)" (\d+)$/ or next;
    push @{ $streams{$client} }, {last_id => $last_id, status => $status};
}
for my $name (@names) {
    my @s = @{ $streams{$name} || [] };
    is(scalar @s, $got{$name}{opens} // -1, "$name: one stream per open event in the access log")
        or diag explain \@s;
    is(scalar(grep { $_->{status} == 200 } @s), scalar @s, "$name: every stream answered 200");
    is($s[0]{last_id} // '', '-', "$name: the first stream sent no Last-Event-ID");
    my @ids = map { $_->{last_id} } @s[1 .. $#s];
    is(scalar(grep { $published_id{$_} } @ids), scalar @ids,
       "$name: every reconnection sent the id of a published event as Last-Event-ID") or diag "@ids";
    my @had = map { $_ > 0 ? $got{$name}{got}[$_ - 1][0] : '-' } @{ $got{$name}{open_at} || [] }[1 .. $#s];
    is("@ids", "@had", "$name: each reconnection sent the id of the last event received before it");
}

$t->finish;
done_testing;

sub slurp {
    my ($file) = @_;
    open my $fh, '<', $file or return '';
    local $/;
    return <$fh>;
}
