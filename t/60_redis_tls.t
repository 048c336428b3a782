# The Redis link over TLS (rediss://), against redis-server listening with TLS only (--port 0
# --tls-port), with certificates this test makes (SSERedis::tls_certs: a CA, a server certificate
# for localhost and 127.0.0.1, a client certificate, and another CA):
# (a) two nodes trusting the CA, one checking the URL's host (127.0.0.1, an IP address of the
#     certificate), one checking sse_redis_tls_server_name localhost: events cross both ways;
# (b) mutual TLS (tls-auth-clients yes): two nodes with a client certificate exchange events; a
#     node without one fails with one warn line, keeps retrying, and nothing crashes;
# (c) a wrong CA: one warn line naming the certificate, retries, not connected;
# (d) sse_redis_tls_verify off with the wrong CA connects;
# (e) sse_redis_tls_server_name wrong.example: one warn line, not connected;
# (f) redis:// (plain) to the TLS-only port: one warn line, retries, no crash;
# (g) configuration errors at nginx -t: a certificate without its key, a bad sse_redis_tls_verify,
#     a trusted certificate file that does not exist.
# Each node's connections are in CLIENT LIST (sse-sub-<pid>, sse-cmd-<pid>).
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(sleep time);
use SSETest;
use SSERedis;
use SSEExpect qw(frames);

my $locations = SSERedis::locations();

my $tuning = SSERedis::quick_link();

my $t0 = time;
my $certs = SSERedis::tls_certs();
my %redis = (
    main  => SSERedis->new(tls => {certs => $certs}),                           # (a), (d)
    mtls  => SSERedis->new(tls => {certs => $certs, auth_clients => 'yes'}),    # (b)
    ca    => SSERedis->new(tls => {certs => $certs}),                           # (c)
    name  => SSERedis->new(tls => {certs => $certs}),                           # (e)
    plain => SSERedis->new(tls => {certs => $certs}),                           # (f)
);
my %nodes;
END { local $?; SSERedis::stop_at_end([values %nodes], values %redis) }

my $PRE = ":ok\n\n";
my $ca = "sse_redis_tls_trusted_certificate $certs->{ca};";
my $client = "sse_redis_tls_certificate $certs->{client_cert};\n    sse_redis_tls_certificate_key $certs->{client_key};";

# name => [redis, URL, TLS directives]
my %plan = (
    A => [main  => 'rediss', $ca],
    B => [main  => 'rediss', "$ca\n    sse_redis_tls_server_name localhost;"],
    G => [main  => 'rediss', "sse_redis_tls_trusted_certificate $certs->{other_ca};\n    sse_redis_tls_verify off;"],
    C => [mtls  => 'rediss', "$ca\n    $client"],
    D => [mtls  => 'rediss', "$ca\n    $client"],
    E => [mtls  => 'rediss', $ca],
    F => [ca    => 'rediss', "sse_redis_tls_trusted_certificate $certs->{other_ca};"],
    H => [name  => 'rediss', "$ca\n    sse_redis_tls_server_name wrong.example;"],
    I => [plain => 'redis',  ''],
);

sub node_for {
    my ($name) = @_;
    my ($r, $scheme, $tls) = @{ $plan{$name} };
    my $url = $scheme eq 'rediss' ? $redis{$r}->rediss_url : $redis{$r}->url;
    return SSETest->new(http => "    sse_redis $url;\n$tuning    $tls\n", server => $locations);
}

# --- (g) configuration errors, at nginx -t ---------------------------------------------------------
{
    my $url = $redis{main}->rediss_url;
    my $conf = sub { SSETest->new(http => "    sse_redis $url;\n    $ca\n    $_[0]\n", server => $locations) };
    my ($rc, $out) = $conf->("sse_redis_tls_certificate $certs->{client_cert};")->test_conf;
    isnt($rc, 0, '(g) nginx -t fails for sse_redis_tls_certificate without sse_redis_tls_certificate_key');
    like($out, qr/\[emerg\].*"sse_redis_tls_certificate_key"/, '(g) the message names the missing directive')
        or diag($out);
    unlike($out, qr/unknown directive/, '(g) the directives are known') or diag($out);

    ($rc, $out) = $conf->($client)->test_conf;
    is($rc, 0, '(g) with the key too, nginx -t passes') or diag($out);

    ($rc, $out) = $conf->('sse_redis_tls_verify maybe;')->test_conf;
    isnt($rc, 0, '(g) nginx -t fails for sse_redis_tls_verify maybe');
    like($out, qr/\[emerg\].*"maybe".*"sse_redis_tls_verify"|\[emerg\].*"sse_redis_tls_verify".*"maybe"/,
         '(g) the message names the directive and the value') or diag($out);

    my $missing = "$certs->{dir}/no-such-ca.pem";
    ($rc, $out) = SSETest->new(http => "    sse_redis $url;\n    sse_redis_tls_trusted_certificate $missing;\n",
                               server => $locations)->test_conf;
    isnt($rc, 0, '(g) nginx -t fails for a trusted certificate file that does not exist');
    like($out, qr/\[emerg\].*\Q$missing\E/, '(g) the message names the file') or diag($out);
}

# --- start every node ----------------------------------------------------------------------------
for my $name (sort keys %plan) {
    my $node = node_for($name);
    my ($rc, $out) = $node->test_conf;
    if ($rc != 0) {
        fail("node $name ($plan{$name}[1]://, " . ($plan{$name}[2] =~ s/\s+/ /gr) . "): nginx -t passes");
        diag($out);
        next;
    }
    $node->start;
    $nodes{$name} = $node;
}
my $started = time;

sub node_ok { my ($name) = @_; return defined $nodes{$name} }

# The link's failure lines of a node's error.log (lost, unreachable, refused).
sub failure_lines {
    my ($node) = @_;
    return grep { /sse: redis (connection to \S+ lost|at \S+ (unreachable|refused))/ } split /\n/, $node->error_log;
}

# Lines at warn or above, besides those of the link.
sub other_lines {
    my ($node) = @_;
    return grep { /\[(warn|error|crit|alert|emerg)\]/ && !/sse: redis (connection to \S+ lost|at \S+ (unreachable|refused))/ }
        split /\n/, $node->error_log;
}

# Connection attempts a Redis saw so far: handshakes that failed (logged) and connections accepted.
sub attempts_seen {
    my ($r) = @_;
    my @failed = grep { /Error accepting a client connection/ } split /\n/, $r->log_text;
    my ($accepted) = $r->cli('INFO', 'stats') =~ /total_connections_received:(\d+)/;
    return @failed + ($accepted // 0);
}

sub body_is {
    my ($s, $want, $label) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    $s->wait_body(length $want, 10);
    $s->drain(0.1) if length($s->body) == length $want;
    return is($s->body, $want, $label);
}

# Each of the node's workers holding the link shows as sse-sub-<pid> and sse-cmd-<pid>.
sub in_client_list {
    my ($r, @names) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    ok($r->wait_clients(2 * @names), 'CLIENT LIST: ' . 2 * @names . ' sse- clients (' . join(', ', @names) . ')');
    my %listed = map { $_ => 1 } $r->client_names;
    for my $name (@names) {
        my @holders = grep { $listed{"sse-sub-$_"} && $listed{"sse-cmd-$_"} } $nodes{$name}->worker_pids;
        is(scalar @holders, 1, "node $name: one worker holds sse-sub-<pid> and sse-cmd-<pid>")
            or diag(join ' ', sort keys %listed);
    }
}

# --- (a) and (d): rediss:// with the right CA; verify off with the wrong one -------------------------
SKIP: {
    skip '(a) nodes A and B did not start', 1 unless node_ok('A') && node_ok('B');
    my ($A, $B) = @nodes{qw(A B)};
    my $G = $nodes{G};
    ok(SSERedis::wait_connected($_, 10), '(a) node ' . ($_ == $A ? 'A' : 'B') . ' connects over TLS') for $A, $B;
    my @streams = map { $_->subscribe('/events?topics=ta') } $A, $B;
    my $sg;
    if ($G) {
        ok(SSERedis::wait_connected($G, 10), '(d) node G (the wrong CA, sse_redis_tls_verify off) connects');
        $sg = $G->subscribe('/events?topics=ta');
    }
    ok($redis{main}->wait_numsub('sse:ta', $G ? 3 : 2), '(a) every node listens to sse:ta');
    my @ev = ($A->publish_event('/pub?topic=ta', 'from A over TLS'),
              $A->publish_event('/pub?topic=ta', "two\nlines", 'named'));
    is($_->[2]{redis}, 'forwarded', '(a) the publish on A is forwarded') for @ev;
    $streams[1]->wait_body(length($PRE . frames(@ev)), 10);
    push @ev, $B->publish_event('/pub?topic=ta', 'from B over TLS', 'b');
    my $want = $PRE . frames(@ev);
    body_is($streams[0], $want, "(a) A's stream: A's events, then B's, exactly");
    body_is($streams[1], $want, "(a) B's stream: the same");
    body_is($sg, $want, "(d) G's stream: the same") if $sg;
    in_client_list($redis{main}, grep { node_ok($_) } qw(A B G));
    $_->close for grep { defined } @streams, $sg;
}
ok(0, '(d) node G started') unless node_ok('G');

# --- (b) mutual TLS ------------------------------------------------------------------------------
SKIP: {
    skip '(b) nodes C and D did not start', 1 unless node_ok('C') && node_ok('D');
    my ($C, $D) = @nodes{qw(C D)};
    ok(SSERedis::wait_connected($_, 10), '(b) node ' . ($_ == $C ? 'C' : 'D') . ' connects with its client certificate')
        for $C, $D;
    my ($sc, $sd) = map { $_->subscribe('/events?topics=tb') } $C, $D;
    ok($redis{mtls}->wait_numsub('sse:tb', 2), '(b) both listen to sse:tb');
    my @ev = ($D->publish_event('/pub?topic=tb', 'from D'));
    $sc->wait_body(length($PRE . frames(@ev)), 10);
    push @ev, $C->publish_event('/pub?topic=tb', 'from C');
    body_is($sc, $PRE . frames(@ev), "(b) C's stream: D's event, then its own");
    body_is($sd, $PRE . frames(@ev), "(b) D's stream: its own, then C's");
    in_client_list($redis{mtls}, 'C', 'D');
    $_->close for $sc, $sd;
}

# --- (b), (c), (e), (f): links that cannot be made --------------------------------------------------
# name => [what, the reason its line must give, its Redis]
my %failing = (
    E => ['(b) mutual TLS without a client certificate', qr/./, 'mtls'],
    F => ['(c) a wrong CA', qr/certificate/i, 'ca'],
    H => ['(e) sse_redis_tls_server_name wrong.example', qr/wrong\.example|certificate|name|host/i, 'name'],
    I => ['(f) redis:// to a TLS-only port', qr/./, 'plain'],
);
# Let the backoff run a few rounds.
sleep 3 - (time - $started) if time - $started < 3;
my %before = map { $_ => attempts_seen($redis{ $failing{$_}[2] }) } grep { node_ok($_) } sort keys %failing;
sleep 1.5;
for my $name (sort keys %failing) {
    my ($what, $re, $r) = @{ $failing{$name} };
    if (!node_ok($name)) {
        fail("$what: node $name started");
        next;
    }
    my $node = $nodes{$name};
    my $state = $node->stats->{redis}{state};
    isnt($state, 'connected', "$what: node $name is not connected ($state)");
    my @lines = failure_lines($node);
    is(scalar @lines, 1, "$what: one warn line for the outage") or diag(join "\n", @lines);
    like($lines[0] // '', qr/\[warn\] .*sse: redis at 127\.0\.0\.1:\d+ unreachable: .*$re.*; retrying$/,
         "$what: the line says why ($re)");
    my $more = attempts_seen($redis{$r}) - $before{$name} - 1;    # the reading itself is a connection
    cmp_ok($more, '>=', 1, "$what: node $name keeps trying ($more attempts in 1.5 s)");
    my @other = other_lines($node);
    ok(!@other, "$what: nothing else at warn or above") or diag(join "\n", @other[0 .. ($#other < 9 ? $#other : 9)]);
    my @exits = grep { /exited on signal|worker process \d+ exited/ } split /\n/, $node->error_log;
    ok(!@exits, "$what: no worker exited") or diag(join "\n", @exits);
}

# The nodes that connected logged nothing at warn or above either.
for my $name (grep { node_ok($_) && !$failing{$_} } sort keys %plan) {
    my @bad = (failure_lines($nodes{$name}), other_lines($nodes{$name}));
    ok(!@bad, "node $name: no warn line") or diag(join "\n", @bad);
}

# Every node stops at once (a graceful stop takes a second or two).
kill 'QUIT', grep { defined } map { $_->master_pid } values %nodes;
$nodes{$_}->finish for sort keys %nodes;
diag(sprintf 'took %.1f s', time - $t0);
done_testing;
