package SSERedis;

# A real redis-server for the cross-node tests: started on a free loopback port in a temp dir,
# with nothing persisted, optionally with a password (requirepass) and ACL users, stopped at the
# end of the test. It can be stopped and started again on the same port to simulate an outage.
#
#   my $redis = SSERedis->new;                               # started
#   my $redis = SSERedis->new(password => 's3cret', users => [[alice => 'pw']]);
#   my $redis = SSERedis->new(start => 0);                   # port reserved, not started
#   my $certs = SSERedis::tls_certs();                       # a CA, server and client certificates
#   my $redis = SSERedis->new(tls => {certs => $certs, auth_clients => 'yes'});   # TLS only
#   $redis->rediss_url;                                      # rediss://127.0.0.1:PORT
#   $redis->url;                                             # redis://127.0.0.1:PORT
#   $redis->url(user => 'alice', password => 'pw');         # redis://alice:pw@127.0.0.1:PORT
#   $redis->cli('PUBSUB', 'NUMSUB', 'sse:news');             # redis-cli's output, chomped
#   $redis->client_count('sse-');                            # CLIENT LIST entries named sse-*
#   $redis->numsub('sse:news');                              # PUBSUB NUMSUB's count
#   $redis->stop; $redis->start;                             # an outage, same port
#   $redis->crash;                                           # SIGKILL: the machine died
#   $redis->info('replication')->{role};                     # INFO's fields
#   my @nodes = $redis->nodes(3, server => $locations);      # 3 started nginx nodes using it
#   SSERedis::wait_connected($node);                         # stats' redis.state is "connected"
#   my $locations = SSERedis::locations(pub => 'sse_history 1000;');   # /events, /pub, /stats
#   SSERedis::quick_link;                                    # short backoff and timeouts (http{})

use strict;
use warnings;

use File::Temp qw(tempdir);
use File::Path ();
use Scalar::Util ();
use IO::Socket::INET;
use POSIX ();
use JSON::PP ();
use Time::HiRes qw(sleep time);
use Test::More ();

use SSETest;

our @ALL;    # every Redis started, weakly held, for the END block

sub new {
    my ($class, %o) = @_;
    my $self = bless {%o}, $class;
    $self->{dir} = tempdir('sse-redis-XXXXXX', TMPDIR => 1, CLEANUP => 0);
    # nginx's workers run as nobody: a unix socket in here must be reachable for them.
    chmod 0755, $self->{dir};
    $self->{port} //= SSETest::free_port();
    push @ALL, $self;
    Scalar::Util::weaken($ALL[-1]);
    $self->write_conf;
    if (defined $o{start} && !$o{start}) {
        $self->hold_port;
    } else {
        $self->start;
    }
    return $self;
}

# While Redis is stopped, a socket bound to its port (not listening, so connections to it are
# refused as they would be with nothing there) keeps other tests from taking the port.
sub hold_port {
    my ($self) = @_;
    for my $reuse (0, 1) {
        my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => $self->{port}, Proto => 'tcp',
                                      ($reuse ? (ReuseAddr => 1) : ()));
        if ($s) { $self->{holder} = $s; return 1 }
    }
    return 0;
}

sub release_port {
    my ($self) = @_;
    close $self->{holder} if $self->{holder};
    $self->{holder} = undef;
}

sub port { $_[0]{port} }
sub dir { $_[0]{dir} }
sub socket_path { "$_[0]{dir}/redis.sock" }
sub running { $_[0]{pid} ? 1 : 0 }

# redis://[user:password@]127.0.0.1:PORT[/db]; the password defaults to requirepass's.
# Options: user, password, db, host.
sub url {
    my ($self, %o) = @_;
    my $pass = exists $o{password} ? $o{password} : $self->{password};
    my $auth = '';
    if (defined $o{user}) {
        $auth = "$o{user}:" . ($pass // '') . '@';
    } elsif (defined $pass) {
        $auth = ":$pass\@";
    }
    my $url = "redis://$auth" . ($o{host} // '127.0.0.1') . ":$self->{port}";
    $url .= "/$o{db}" if defined $o{db};
    return $url;
}

# rediss://[user:password@]127.0.0.1:PORT[/db]: url()'s options, for a server made with tls.
sub rediss_url {
    my ($self, %o) = @_;
    my $url = $self->url(%o);
    $url =~ s{^redis://}{rediss://};
    return $url;
}

# unix:/path/to/redis.sock[?db=N] (the server listens on one when made with unixsocket => 1).
sub unix_url {
    my ($self, %o) = @_;
    return 'unix:' . $self->socket_path . (defined $o{db} ? "?db=$o{db}" : '');
}

sub write_conf {
    my ($self) = @_;
    my $d = $self->{dir};
    # With tls, the port speaks TLS only: the plain port is off (port 0).
    my $tls = $self->{tls};
    my $plain_port = $tls ? 0 : $self->{port};
    my $conf = <<"CONF";
bind 127.0.0.1
port $plain_port
protected-mode no
daemonize no
save ""
appendonly no
dir $d
logfile $d/redis.log
loglevel notice
databases 16
CONF
    if ($self->{unixsocket}) {
        $conf .= "unixsocket " . $self->socket_path . "\nunixsocketperm 777\n";
    }
    if ($tls) {
        my $c = $tls->{certs} or die "tls needs certs (SSERedis::tls_certs)";
        $conf .= "tls-port $self->{port}\ntls-cert-file $c->{server_cert}\ntls-key-file $c->{server_key}\n"
               . "tls-ca-cert-file $c->{ca}\ntls-auth-clients " . ($tls->{auth_clients} // 'no') . "\n";
    }
    $conf .= "requirepass $self->{password}\n" if defined $self->{password};
    # ACL users: [name, password, rules (default: everything)].
    for my $u (@{ $self->{users} || [] }) {
        my ($name, $pass, $rules) = @$u;
        $conf .= "user $name on >$pass " . ($rules // '~* &* +@all') . "\n";
    }
    $conf .= $self->{extra_conf} if $self->{extra_conf};
    open my $fh, '>', "$d/redis.conf" or die "redis.conf: $!";
    print $fh $conf;
    close $fh;
}

# Is something accepting connections on the port?
sub port_open {
    my ($self) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $self->{port}, Proto => 'tcp', Timeout => 1);
    return 0 unless $s;
    close $s;
    return 1;
}

# What runs this server (SSESentinel's sentinels run the same binary in sentinel mode).
sub command {
    my ($self) = @_;
    return ('redis-server', "$self->{dir}/redis.conf");
}

# Starts redis-server (again, on the same port after stop) and waits until it answers PING.
sub start {
    my ($self) = @_;
    die "redis already running" if $self->{pid};
    $self->release_port;
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        # The child must never run the test's END blocks or destructors.
        open STDIN, '<', '/dev/null';
        open STDOUT, '>>', "$self->{dir}/redis.stdout";
        open STDERR, '>&', \*STDOUT;
        exec($self->command) or POSIX::_exit(127);
    }
    $self->{pid} = $pid;
    my $end = time + 10;
    while (time < $end) {
        if (waitpid($pid, POSIX::WNOHANG()) == $pid) {
            $self->{pid} = undef;
            die "redis-server exited at start: " . $self->log_text;
        }
        if ($self->port_open) {
            my $pong = $self->cli('PING');
            return $self if $pong eq 'PONG';
        }
        sleep 0.05;
    }
    die "redis-server did not answer within 10 s: " . $self->log_text;
}

# Stops redis-server: SHUTDOWN NOSAVE, else SIGTERM, else SIGKILL; returns once the process is
# gone and the port is closed.
sub stop {
    my ($self) = @_;
    my $pid = $self->{pid} or return;
    $self->cli('SHUTDOWN', 'NOSAVE');
    my $end = time + 5;
    my $gone = 0;
    while (time < $end) {
        if (waitpid($pid, POSIX::WNOHANG()) == $pid) { $gone = 1; last }
        sleep 0.02;
    }
    if (!$gone) {
        kill 'TERM', $pid;
        $end = time + 5;
        while (time < $end) {
            if (waitpid($pid, POSIX::WNOHANG()) == $pid) { $gone = 1; last }
            sleep 0.02;
        }
    }
    if (!$gone) {
        kill 'KILL', $pid;
        waitpid($pid, 0);
    }
    $self->{pid} = undef;
    $end = time + 5;
    while ($self->port_open && time < $end) { sleep 0.02 }
    die "redis port $self->{port} still open after stop" if $self->port_open;
    $self->hold_port;
    return $self;
}

# SIGKILL, as when its machine dies: nothing flushed, nothing said to clients or replicas. The
# port is then held (refusing connections) like after stop.
sub crash {
    my ($self) = @_;
    my $pid = $self->{pid} or return;
    kill 'KILL', $pid;
    waitpid($pid, 0);
    $self->{pid} = undef;
    $self->hold_port;
    return $self;
}

# Runs redis-cli against this server, authenticated as the admin (the default user with
# requirepass's password) unless auth => [user, pass] or auth => undef is given first as
# { auth => ... }; returns its output without the trailing newline.
sub cli {
    my ($self, @args) = @_;
    my %o = ref $args[0] eq 'HASH' ? %{ shift @args } : ();
    my @auth;
    local $ENV{REDISCLI_AUTH};
    if (exists $o{auth}) {
        if ($o{auth}) {
            @auth = ('--user', $o{auth}[0]);
            $ENV{REDISCLI_AUTH} = $o{auth}[1];
        }
    } elsif (defined $self->{password}) {
        $ENV{REDISCLI_AUTH} = $self->{password};
    }
    delete $ENV{REDISCLI_AUTH} unless defined $ENV{REDISCLI_AUTH};
    my $pid = open(my $fh, '-|') // die "fork: $!";
    if (!$pid) {
        open STDERR, '>&', \*STDOUT;
        exec('redis-cli', '-h', '127.0.0.1', '-p', $self->{port}, $self->cli_tls, @auth, @args) or POSIX::_exit(127);
    }
    local $/;
    my $out = <$fh> // '';
    close $fh;
    $out =~ s/\n\z//;
    return $out;
}

# INFO [section...] as {field => value} ("field:value" lines; {} when Redis does not answer).
sub info {
    my ($self, @sections) = @_;
    my %f;
    for (split /\r?\n/, $self->cli('INFO', @sections)) {
        my ($k, $v) = /^(\w[\w|]*):(.*?)\r?$/ or next;
        $f{$k} = $v;
    }
    return \%f;
}

# redis-cli's TLS options for a server made with tls: the CA, and the client certificate (which a
# server with tls-auth-clients yes asks for).
sub cli_tls {
    my ($self) = @_;
    my $c = $self->{tls} && $self->{tls}{certs} or return ();
    return ('--tls', '--cacert', $c->{ca}, '--cert', $c->{client_cert}, '--key', $c->{client_key});
}

# CLIENT LIST entries whose name starts with $prefix (default "sse-").
sub client_names {
    my ($self, $prefix) = @_;
    $prefix //= 'sse-';
    my @names;
    for my $line (split /\n/, $self->cli('CLIENT', 'LIST')) {
        my ($name) = $line =~ /(?:^| )name=(\S*)/ or next;
        push @names, $name if index($name, $prefix) == 0;
    }
    return sort @names;
}

sub client_count {
    my ($self, $prefix) = @_;
    my @n = $self->client_names($prefix);
    return scalar @n;
}

# PUBSUB NUMSUB <channel>: how many connections are subscribed to it (-1 when unreadable).
sub numsub {
    my ($self, $channel) = @_;
    my @l = split /\n/, $self->cli('PUBSUB', 'NUMSUB', $channel);
    return (@l == 2 && $l[1] =~ /^\d+$/) ? $l[1] : -1;
}

# The Redis list key's length (the channel's history in Redis).
sub llen {
    my ($self, $key) = @_;
    my $n = $self->cli('LLEN', $key);
    return $n =~ /^\d+$/ ? $n : -1;
}

# Polls until PUBSUB NUMSUB <channel> is $n (up to $timeout s, default 10); true when it is.
sub wait_numsub {
    my ($self, $channel, $n, $timeout) = @_;
    my $v = wait_value(sub { $self->numsub($channel) }, $n, $timeout);
    Test::More::diag("PUBSUB NUMSUB $channel is $v, not $n") unless $v eq $n;
    return $v eq $n;
}

# Polls until CLIENT LIST holds $n clients named $prefix* (default sse-); true when it does.
sub wait_clients {
    my ($self, $n, $prefix, $timeout) = @_;
    my $v = wait_value(sub { $self->client_count($prefix) }, $n, $timeout);
    Test::More::diag("CLIENT LIST holds $v clients named " . ($prefix // 'sse-') . "*, not $n: "
                     . join(' ', $self->client_names($prefix))) unless $v eq $n;
    return $v eq $n;
}

# Failed authentications Redis recorded for $user (ACL LOG, reason auth; Redis groups repeats of
# one entry and counts them).
sub auth_failures {
    my ($self, $user) = @_;
    my @l = split /\n/, $self->cli('ACL', 'LOG', 128);
    my ($n, %e) = (0);
    my $flush = sub { $n += $e{count} if %e && ($e{reason} // '') eq 'auth' && ($e{username} // '') eq $user; %e = () };
    for (my $i = 0; $i + 1 < @l; $i += 2) {
        $flush->() if $l[$i] eq 'count';
        $e{ $l[$i] } = $l[$i + 1];
    }
    $flush->();
    return $n;
}

# Certificates for TLS tests, made with openssl in a new directory (or $o{dir}), readable by
# nginx's workers: a CA; a server certificate it signs for localhost and 127.0.0.1 (and the names
# in $o{server_names}: DNS names or IP addresses); a client certificate it signs (CN sse-node), for
# mutual TLS; and another CA that signed none of them (a wrong CA). Returns the paths: ca, ca_key,
# server_cert, server_key, client_cert, client_key, other_ca, dir. Kept with SSE_KEEP=1.
our @CERT_DIRS;

sub tls_certs {
    my (%o) = @_;
    my $d = $o{dir} // tempdir('sse-certs-XXXXXX', TMPDIR => 1, CLEANUP => 0);
    push @CERT_DIRS, $d unless $o{dir};
    chmod 0755, $d;
    my @names = ('localhost', '127.0.0.1', @{ $o{server_names} || [] });
    my $san = join ',', map { /^[\d.]+$|:/ ? "IP:$_" : "DNS:$_" } @names;
    my $run = sub {
        my @cmd = @_;
        my $pid = open(my $fh, '-|') // die "fork: $!";
        if (!$pid) {
            open STDERR, '>&', \*STDOUT;
            exec(@cmd) or POSIX::_exit(127);
        }
        local $/;
        my $out = <$fh> // '';
        close $fh;
        die "@cmd: $out" if $?;
    };
    # EC keys: quick to make.
    my @key = ('-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes');
    for my $ca ('ca', 'other_ca') {
        $run->('openssl', 'req', '-x509', @key, '-days', '2', '-subj', "/CN=sse test $ca", '-keyout', "$d/$ca.key",
               '-out', "$d/$ca.pem", '-addext', 'basicConstraints=critical,CA:TRUE',
               '-addext', 'keyUsage=critical,keyCertSign,cRLSign');
    }
    my %ext = (server => "subjectAltName=$san\nextendedKeyUsage=serverAuth\n",
               client => "extendedKeyUsage=clientAuth\n");
    my %cn = (server => 'localhost', client => 'sse-node');
    for my $who ('server', 'client') {
        open my $fh, '>', "$d/$who.ext" or die $!;
        print $fh "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n$ext{$who}";
        close $fh;
        $run->('openssl', 'req', @key, '-subj', "/CN=$cn{$who}", '-keyout', "$d/$who.key", '-out', "$d/$who.csr");
        $run->('openssl', 'x509', '-req', '-in', "$d/$who.csr", '-CA', "$d/ca.pem", '-CAkey', "$d/ca.key",
               '-CAcreateserial', '-days', '2', '-extfile', "$d/$who.ext", '-out', "$d/$who.pem");
    }
    chmod 0644, glob "$d/*";
    return {dir => $d, ca => "$d/ca.pem", ca_key => "$d/ca.key", other_ca => "$d/other_ca.pem",
            server_cert => "$d/server.pem", server_key => "$d/server.key",
            client_cert => "$d/client.pem", client_key => "$d/client.key"};
}

sub log_text {
    my ($self) = @_;
    my $text = '';
    for my $f ("$self->{dir}/redis.log", "$self->{dir}/redis.stdout") {
        open my $fh, '<', $f or next;
        local $/;
        $text .= <$fh>;
    }
    return $text;
}

# The server{} locations the cross-node tests serve: /events streams $arg_topics without
# heartbeats (they would come between a test's exact bytes), /pub publishes to $arg_topic, /stats.
# events => and pub => add directives to those two (a string); pub => undef leaves /pub out;
# more => appends locations of the test's own.
sub locations {
    my (%o) = @_;
    my $block = sub {
        my ($name, @lines) = @_;
        return "        location = /$name {\n" . join('', map { "            $_\n" } grep { defined } @lines)
            . "        }\n";
    };
    my $text = $block->('events', 'sse_subscribe $arg_topics;', $o{events}, 'sse_heartbeat off;');
    $text .= $block->('pub', 'sse_publish $arg_topic;', $o{pub}) if !exists $o{pub} || defined $o{pub};
    $text .= $o{more} // '';
    $text .= $block->('stats', 'sse_stats;');
    return $text;
}

# The http{} directives of the tests that break the link on purpose: a short backoff and short
# timeouts, so that each case takes a few seconds.
sub quick_link {
    return "    sse_redis_reconnect 50ms 400ms;\n    sse_redis_connect_timeout 1s;\n    sse_redis_command_timeout 1s;\n";
}

# The steady publishers of the failover tests (t/61, t/64): forks one that POSTs "<tag> <n>" to
# $node's /pub?topic=<$o{channel}->($n)> every $o{period} s, after $o{delay} s, until $o{stop_file}
# exists (or the test is gone, or 60 s have passed), logging "tag n channel status id redis sent
# answered" per publish to $o{log}. Returns its pid and its log.
sub start_paced_publisher {
    my ($node, $tag, %o) = @_;
    my $parent = $$;
    my $pid = fork // die "fork: $!";
    return ($pid, $o{log}) if $pid;
    alarm 0;
    open my $fh, '>', $o{log} or POSIX::_exit(2);
    $fh->autoflush(1);
    sleep $o{delay} if $o{delay};
    my $next = time;
    my $deadline = $next + 60;
    for (my $n = 1; !-e $o{stop_file} && getppid() == $parent && time < $deadline; $n++) {
        my $ch = $o{channel}->($n);
        my $sent = time;
        my $r = eval { $node->request('POST', "/pub?topic=$ch", body => "$tag $n") };
        my $j = $r && $r->{status} == 202 ? eval { JSON::PP::decode_json($r->{body}) } : undef;
        printf $fh "%s %d %s %d %s %s %.6f %.6f\n", $tag, $n, $ch, $r ? $r->{status} : 0, ($j && $j->{id}) // '-',
            ($j && $j->{redis}) // '-', $sent, time;
        $next += $o{period};
        my $pause = $next - time;
        sleep $pause if $pause > 0;
    }
    close $fh;
    POSIX::_exit(0);    # never run the parent's destructors (they would stop nginx)
}

# Stops the publishers start_paced_publisher forked (each [pid, log]): the stop file, then each
# reaped (at most 15 s each).
sub stop_paced_publishers {
    my ($stop_file, @publishers) = @_;
    { open my $fh, '>', $stop_file or die "$stop_file: $!"; }
    for my $p (@publishers) {
        my $end = time + 15;
        sleep 0.05 while waitpid($p->[0], POSIX::WNOHANG()) != $p->[0] && time < $end;
    }
}

# What a start_paced_publisher child logged: ({tag, n, ch, status, id, redis, sent, answered}, ...).
sub read_paced_publisher_log {
    my ($log) = @_;
    open my $fh, '<', $log or die "$log: $!";
    my @l;
    while (<$fh>) {
        my %p;
        @p{qw(tag n ch status id redis sent answered)} = split;
        push @l, \%p;
    }
    return @l;
}

# Starts $n nginx nodes (SSETest objects) whose http{} begins with "sse_redis <url>;"; %o goes to
# SSETest->new (http is appended after sse_redis; url overrides the URL; start => 0 leaves them
# stopped). Returns the nodes.
sub nodes {
    my ($self, $n, %o) = @_;
    my $start = exists $o{start} ? delete $o{start} : 1;
    my $url = delete $o{url} // $self->url;
    my $http = delete $o{http} // '';
    my @nodes = map { SSETest->new(%o, http => "    sse_redis $url;\n$http") } 1 .. $n;
    if ($start) { $_->start for @nodes }
    return @nodes;
}

# nginx -s reload on $node, returning once every worker not shutting down is a new one (SSETest's
# reload returns when the new workers run; a worker of the old generation may not have begun to
# shut down yet, and a stream it accepts then ends at once).
sub reload_node {
    my ($node, $timeout) = @_;
    my %old = map { $_ => 1 } $node->worker_pids(1);
    $node->reload;
    my $ok = SSETest::wait_until(sub { !grep { $old{$_} } $node->worker_pids }, $timeout // 10);
    die "reload: workers of the old generation still run without shutting down" unless $ok;
    return $node;
}

# Polls $node's stats until its redis.state is $state (default "connected"), up to $timeout s.
sub wait_state {
    my ($node, $state, $timeout) = @_;
    $state //= 'connected';
    my $last = '';
    my $ok = SSETest::wait_until(sub {
        my $st = eval { $node->stats } or return 0;
        $last = ($st->{redis} && $st->{redis}{state}) // '(none)';
        return $last eq $state;
    }, $timeout // 10);
    Test::More::diag("redis state of node :" . $node->port . " is $last, not $state") unless $ok;
    return $ok;
}

sub wait_connected { my ($node, $timeout) = @_; return wait_state($node, 'connected', $timeout) }

# Polls until $code returns $want (compared as strings), up to $timeout s; returns the last value.
sub wait_value {
    my ($code, $want, $timeout) = @_;
    my $v;
    SSETest::wait_until(sub { $v = $code->(); defined $v && $v eq $want }, $timeout // 10);
    return $v;
}

# Compares two event ids (decimal strings, possibly beyond what a double holds exactly).
sub id_cmp {
    my ($x, $y) = @_;
    return length($x) <=> length($y) || $x cmp $y;
}

# Lines of $node's error.log matching $re.
sub log_lines {
    my ($node, $re) = @_;
    return grep { /$re/ } split /\n/, $node->error_log;
}

# For an END block: when a test died before $node->finish, shows what each such node logged at
# warn or worse (and every Redis line), so that the failure can be understood afterwards.
sub diag_unfinished {
    my (@nodes) = @_;
    for my $n (grep { defined && !$_->{checked} } @nodes) {
        my @l = grep { /\[(?:warn|error|crit|alert|emerg)\]|sse: redis|Sanitizer|runtime error/ } split /\n/, $n->error_log;
        splice @l, 0, @l - 40 if @l > 40;
        Test::More::diag('node :' . $n->port . " did not finish; its error.log says:\n" . join("\n", @l)) if @l;
    }
}

# For an END block: what diag_unfinished shows of the nodes in @$nodes, then stops them and every
# server after them (SSERedis, FakeRedis or anything with a stop method; undef is skipped).
sub stop_at_end {
    my ($nodes, @servers) = @_;
    diag_unfinished(@$nodes);
    $_->stop for grep { defined } @$nodes, @servers;
}

sub DESTROY {
    my ($self) = @_;
    local ($?, $!, $@);
    eval { $self->stop };
    $self->release_port;
    File::Path::remove_tree($self->{dir}) if $self->{dir} && !$ENV{SSE_KEEP};
}

END {
    local ($?, $!, $@);
    for my $r (grep { defined } @ALL) { eval { $r->stop } }
    File::Path::remove_tree(@CERT_DIRS) if @CERT_DIRS && !$ENV{SSE_KEEP};
}

1;
